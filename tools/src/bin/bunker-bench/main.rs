//! The end-to-end benchmark: SAN-like images (day 0 and next days) through a
//! real `bunker serve` on loopback, over raw HTTP uploads and over `bunker
//! backup`, restores and drills, next to this machine's limits on the same
//! files (BLAKE3 on all cores, sequential read, sequential write with
//! fdatasync) and, with `--peers`, restic and borg on the same images.
//! Prints one markdown table. Run through `tools/bench`.
//!
//! `--scale` instead runs the 50-million-entry index benchmark and ingests a
//! 32 GiB image generated on the fly, sampling the server's RSS.
//!
//! `--s3` runs the workload against a local-backend and an S3-backend server
//! on SeaweedFS in the same run, with the object-storage figures (see `s3`).
//!
//! `--encryption` runs the raw-upload workload on a clear and an encrypted
//! repository (`bunker serve --key-file`) in the same run, alternating, and
//! prints their ingest, server CPU and restore figures side by side.
//!
//! `--sync` backs each day up to one server and times `bunker sync` to a
//! second one: replication throughput, logical and on the wire, beside
//! `restic copy` between two local repositories of the same images
//! (`sync`).

mod proxy;
mod s3;
mod sync;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bunker_testdata::image::{parse_size, Image, ImageSpec};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Day-0 image size [default: 4G, 1G with --s3].
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Next days after day 0 [default: 3, 2 with --s3].
    #[arg(long)]
    days: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run restic and borg (tools/bench --peers installs them).
    #[arg(long)]
    peers: bool,
    /// Scale run: 50 M-entry index, then 4 GiB and 32 GiB streamed ingests
    /// with RSS samples.
    #[arg(long)]
    scale: bool,
    /// With --scale: skip the 50 M-entry index benchmark.
    #[arg(long)]
    skip_index: bool,
    /// Local backend against S3 on SeaweedFS (`weed`, tools/s3/install):
    /// ingest, restore, drill, objects and requests per GiB, cold-cache
    /// restore against a plain parallel GET, rebuild from the bucket.
    #[arg(long)]
    s3: bool,
    /// With --s3: small snapshots made to time a rebuild per snapshot.
    #[arg(long, default_value_t = 300)]
    s3_snapshots: u32,
    /// Replication: each day backed up to a source server and copied to a
    /// target with `bunker sync`, and the same with `restic copy` between
    /// two local repositories (tools/bench --sync installs restic)
    /// [default size 1G, days 2].
    #[arg(long)]
    sync: bool,
    /// Back up these image files (day 0, then the next days, comma
    /// separated) instead of generating SAN-like ones; `--size`, `--days`
    /// and `--seed` are then ignored. `tools/ext4-image` makes ext4 ones.
    #[arg(long, value_delimiter = ',')]
    images: Vec<PathBuf>,
    /// A clear against an encrypted repository, same images, same run
    /// (raw uploads, restore) [default size 1G, days 2].
    #[arg(long)]
    encryption: bool,
    /// Working directory (default: a temporary directory under target/).
    #[arg(long)]
    work: Option<PathBuf>,
}

/// Peak resident set of a process, polled from /proc while it runs.
struct RssWatch {
    peak: Arc<AtomicU64>,
    /// Peak of the anonymous (heap) part, sampled: mapped pack and index
    /// pages are page cache the kernel can take back, the heap is not.
    heap: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let heap = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, h, s) = (peak.clone(), heap.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(hwm) = status_field(pid, "VmHWM:") else {
                    break;
                };
                p.fetch_max(hwm, Ordering::Relaxed);
                if let Some(anon) = status_field(pid, "RssAnon:") {
                    h.fetch_max(anon, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch {
            peak,
            heap,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling: (peak RSS, sampled peak of its anonymous part).
    fn peak(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::Relaxed),
            self.heap.load(Ordering::Relaxed),
        )
    }
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    bunker_tools::rss::status_field(&pid.to_string(), name)
}

struct Server {
    child: Child,
    url: String,
    token: String,
}

impl Server {
    /// `bunker serve` on `data` with `extra` arguments (the storage flags).
    fn start(bunker: &Path, data: &Path, extra: &[String]) -> anyhow::Result<Server> {
        Server::start_as(bunker, data, extra, None)
    }

    /// [`Server::start`] as `token` rather than the `admin.token` it
    /// writes (a server rebuilt from a bucket keeps the old tokens and
    /// writes none).
    fn start_as(
        bunker: &Path,
        data: &Path,
        extra: &[String],
        token: Option<&str>,
    ) -> anyhow::Result<Server> {
        let mut child = Command::new(bunker)
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bunker.display()))?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let url = line
            .trim()
            .strip_prefix("bunker listening on ")
            .context("no listening line")?
            .to_string();
        let token = match token {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(data.join("admin.token"))?
                .trim()
                .to_string(),
        };
        Ok(Server { child, url, token })
    }

    fn stats(&self, agent: &ureq::Agent) -> anyhow::Result<serde_json::Value> {
        let mut r = agent
            .get(&format!("{}/v1/stats", self.url))
            .header("authorization", &format!("Bearer {}", self.token))
            .call()?;
        Ok(r.body_mut().read_json()?)
    }

    /// `bunker_ingest_cpu_seconds_total` by stage, from `GET /metrics`.
    fn stage_cpu(&self, agent: &ureq::Agent) -> anyhow::Result<Vec<(String, f64)>> {
        let text = agent
            .get(&format!("{}/metrics", self.url))
            .header("authorization", &format!("Bearer {}", self.token))
            .call()?
            .body_mut()
            .read_to_string()?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("bunker_ingest_cpu_seconds_total{stage=\""))
            .filter_map(|l| {
                let (stage, v) = l.split_once("\"} ")?;
                Some((stage.to_string(), v.trim().parse().ok()?))
            })
            .collect())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Result of one tool on the whole series.
#[derive(Default)]
struct Run {
    ingest_s: Vec<f64>,
    /// CPU seconds (user + system) the server spent on each day's upload.
    server_cpu_s: Vec<f64>,
    /// Of that, thread CPU seconds per ingest stage (raw HTTP run only:
    /// the chunk protocol's path is not timed by stage).
    stage_cpu_s: Vec<Vec<(String, f64)>>,
    stored_after: Vec<u64>,
    restore_s: Option<f64>,
    /// CPU seconds the server spent on the restore.
    restore_cpu_s: Option<f64>,
    drill_s: Option<f64>,
    /// Server peak during the uploads only (before any restore).
    rss_server_ingest: Option<u64>,
    /// (peak RSS, peak of its heap part) over uploads and restores.
    rss_server: Option<(u64, u64)>,
    rss_client: Option<u64>,
    /// The raw run used curl (else ureq in this process).
    via_curl: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("exe dir")?.to_path_buf();
    let bunker = bin_dir.join("bunker");
    if !bunker.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p bunker-cli` (tools/bench does)",
            bunker.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("bunker-bench-")
        .tempdir_in(bin_dir.parent().unwrap_or(&bin_dir))?;
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    if args.scale {
        return scale(&bunker, &bin_dir, &work, args.skip_index);
    }
    let (size, days) = match args.s3 || args.sync || args.encryption {
        true => (args.size.unwrap_or(1 << 30), args.days.unwrap_or(2)),
        false => (args.size.unwrap_or(4 << 30), args.days.unwrap_or(3)),
    };
    let spec = ImageSpec::new(args.seed, size);
    let mut images = args.images.clone();
    let days = match images.len() {
        0 => days,
        n => n as u32 - 1,
    };
    for day in (0..=days).filter(|_| args.images.is_empty()) {
        let path = work.join(format!("day{day}.img"));
        let mut f = std::io::BufWriter::with_capacity(4 << 20, File::create(&path)?);
        Image::new(&spec, day).write_to(&mut f)?;
        f.into_inner()?.sync_all()?;
        images.push(path);
    }
    let sizes: Vec<u64> = images
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    eprintln!("images: {} days, day 0 = {} bytes", images.len(), sizes[0]);
    if args.s3 {
        return s3::run(&bunker, &work, &images, &sizes, &args, days);
    }
    if args.sync {
        let mut copies = sync::run(&bunker, &work, &images)?;
        if which("restic") {
            copies.extend(sync::restic(&work, &images)?);
        } else {
            eprintln!(
                "restic is not installed: no restic copy rows (tools/bench --sync installs it)"
            );
        }
        sync::print(&copies);
        return Ok(());
    }
    if args.encryption {
        return encryption(&bunker, &work, &images, &sizes);
    }
    let limits = limits(&images[0], &work)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let raw = bunker_raw(
        &bunker,
        &work.join("raw"),
        &[],
        &images,
        &agent,
        &mut || Ok(()),
    )?;
    let client = bunker_client(
        &bunker,
        &work.join("cli"),
        &[],
        &images,
        &agent,
        &mut || Ok(()),
    )?;
    let restic = if args.peers && which("restic") {
        Some(restic(&work, &images)?)
    } else {
        None
    };
    let borg = if args.peers && which("borg") {
        Some(borg(&work, &images)?)
    } else {
        None
    };
    print_table(
        &args,
        days,
        &sizes,
        &limits,
        &raw,
        &client,
        restic.as_ref(),
        borg.as_ref(),
    );
    Ok(())
}

/// `--encryption`: the raw workload on a clear and an encrypted server,
/// twice each, alternating (the machine may be loaded: same-run ratios are
/// what matter); prints the better of each pair.
fn encryption(bunker: &Path, work: &Path, images: &[PathBuf], sizes: &[u64]) -> anyhow::Result<()> {
    let key = work.join("repo.key");
    let o = Command::new(bunker)
        .args(["key", "create", "--out"])
        .arg(&key)
        .output()?;
    if !o.status.success() {
        bail!("bunker key create: {}", String::from_utf8_lossy(&o.stderr));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let keyed = ["--key-file".to_string(), key.display().to_string()];
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, extra) in [&[][..], &keyed[..]].into_iter().enumerate() {
            let data = work.join(format!("enc-{i}-{round}"));
            runs[i].push(bunker_raw(
                bunker,
                &data,
                extra,
                images,
                &agent,
                &mut || Ok(()),
            )?);
            std::fs::remove_dir_all(&data)?;
        }
    }
    let best = |rs: &[Run], f: &dyn Fn(&Run) -> f64| rs.iter().map(f).fold(f64::MAX, f64::min);
    println!(
        "| repository | day | ingest GB/s | server CPU s/GB | restore GB/s | restore server CPU s/GB |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, name) in ["clear", "encrypted"].iter().enumerate() {
        for (d, &size) in sizes.iter().enumerate() {
            let secs = best(&runs[i], &|r| r.ingest_s[d]);
            let cpu = best(&runs[i], &|r| r.server_cpu_s[d]);
            let restore = if d + 1 == sizes.len() {
                let s = best(&runs[i], &|r| r.restore_s.unwrap_or(f64::MAX));
                let c = best(&runs[i], &|r| r.restore_cpu_s.unwrap_or(f64::MAX));
                format!("{:.2} | {:.2}", gbps(size, s), c / (size as f64 / 1e9))
            } else {
                "- | -".into()
            };
            println!(
                "| {name} | {d} | {:.2} | {:.2} | {restore} |",
                gbps(size, secs),
                cpu / (size as f64 / 1e9)
            );
        }
    }
    Ok(())
}

struct Limits {
    blake3_gbps: f64,
    read_gbps: f64,
    write_gbps: f64,
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

fn drop_cache(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
}

/// The machine on the same file: BLAKE3 on all cores (file cached), a
/// sequential read from disk, a sequential write with fdatasync.
fn limits(image: &Path, work: &Path) -> anyhow::Result<Limits> {
    let len = std::fs::metadata(image)?.len();
    let mut buf = vec![0u8; 16 << 20];
    // Warm the cache, then hash.
    let mut f = File::open(image)?;
    while f.read(&mut buf)? > 0 {}
    let t = Instant::now();
    let mut f = File::open(image)?;
    let mut h = blake3::Hasher::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update_rayon(&buf[..n]);
    }
    let blake3_gbps = gbps(len, t.elapsed().as_secs_f64());
    drop_cache(image);
    let t = Instant::now();
    let mut f = File::open(image)?;
    while f.read(&mut buf)? > 0 {}
    let read_gbps = gbps(len, t.elapsed().as_secs_f64());
    let out = work.join("write-test");
    let t = Instant::now();
    let mut w = File::create(&out)?;
    let mut left = len;
    buf.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 31 % 251) as u8);
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.sync_data()?;
    let write_gbps = gbps(len, t.elapsed().as_secs_f64());
    drop(w);
    std::fs::remove_file(&out)?;
    Ok(Limits {
        blake3_gbps,
        read_gbps,
        write_gbps,
    })
}

/// Raw uploads, then a GET of the latest to a file and to nowhere: with
/// `curl -T` and `curl -o` when curl is installed (what storage teams run),
/// else through ureq in this process (which then shares the cores with the
/// server and costs more CPU per byte than curl). The server runs on
/// `data` with `extra` arguments; `after_day` runs after each upload.
fn bunker_raw(
    bunker: &Path,
    data: &Path,
    extra: &[String],
    images: &[PathBuf],
    agent: &ureq::Agent,
    after_day: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let server = Server::start(bunker, data, extra)?;
    let mut watch = RssWatch::start(server.child.id());
    let mut run = Run::default();
    let auth = format!("Authorization: Bearer {}", server.token);
    let url = format!("{}/v1/snapshots/vol", server.url);
    let curl = which("curl");
    // `curl -sS -o OUT -w %{http_code} ARGS...`: the HTTP status.
    let curl_status = |out: &Path, args: &[&str]| -> anyhow::Result<u16> {
        let o = Command::new("curl")
            .args(["-sS", "-H", &auth, "-w", "%{http_code}", "-o"])
            .arg(out)
            .args(args)
            .output()
            .context("running curl")?;
        if !o.status.success() {
            bail!(
                "curl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
    };
    ingest_days(&server, images, agent, &mut run, after_day, &mut |img| {
        let t = Instant::now();
        let status = if curl {
            curl_status(
                Path::new("/dev/null"),
                &["-T", &img.to_string_lossy(), &url],
            )?
        } else {
            let mut f = File::open(img)?;
            agent
                .put(&url)
                .header("authorization", &format!("Bearer {}", server.token))
                .send(ureq::SendBody::from_reader(&mut f))?
                .status()
                .as_u16()
        };
        if status != 201 {
            bail!("raw upload of {} answered {status}", img.display());
        }
        Ok(t.elapsed().as_secs_f64())
    })?;
    let latest = format!("{url}/latest/data");
    let get = |to: &Path| -> anyhow::Result<f64> {
        let t = Instant::now();
        if curl {
            let status = curl_status(to, &[&latest])?;
            if status != 200 {
                bail!("restore answered {status}");
            }
        } else {
            let r = agent
                .get(&latest)
                .header("authorization", &format!("Bearer {}", server.token))
                .call()?;
            let mut f = File::create(to)?;
            std::io::copy(&mut r.into_body().into_reader(), &mut f)?;
        }
        if to != Path::new("/dev/null") {
            File::options().write(true).open(to)?.sync_data()?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let out = data.with_extension("restore.img");
    let cpu = cpu_secs(server.child.id());
    run.restore_s = Some(get(&out)?);
    run.restore_cpu_s = Some(cpu_secs(server.child.id()) - cpu);
    std::fs::remove_file(&out)?;
    run.drill_s = Some(get(Path::new("/dev/null"))?);
    run.rss_server = Some(watch.peak());
    run.via_curl = curl;
    server.stop();
    Ok(run)
}

/// `bunker backup` (client-side dedup), `bunker restore` to a file and
/// `bunker drill`, each a separate client process; server and `after_day`
/// as in [`bunker_raw`].
fn bunker_client(
    bunker: &Path,
    data: &Path,
    extra: &[String],
    images: &[PathBuf],
    agent: &ureq::Agent,
    after_day: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let server = Server::start(bunker, data, extra)?;
    let mut watch = RssWatch::start(server.child.id());
    let mut run = Run::default();
    let mut client_peak = 0u64;
    let mut cli = |args: &[&str]| -> anyhow::Result<f64> {
        let t = Instant::now();
        let child = Command::new(bunker)
            .args(args)
            .env("BUNKER_SERVER", &server.url)
            .env("BUNKER_TOKEN", &server.token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut w = RssWatch::start(child.id());
        let out = child.wait_with_output()?;
        client_peak = client_peak.max(w.peak().0);
        if !out.status.success() {
            bail!("bunker {args:?} failed");
        }
        Ok(t.elapsed().as_secs_f64())
    };
    ingest_days(&server, images, agent, &mut run, after_day, &mut |img| {
        cli(&["backup", "vol", &img.display().to_string()])
    })?;
    let out = data.with_extension("restore.img");
    run.restore_s = Some(cli(&[
        "restore",
        "--force",
        "vol",
        &out.display().to_string(),
    ])?);
    std::fs::remove_file(&out)?;
    run.drill_s = Some(cli(&["drill", "vol"])?);
    run.rss_client = Some(client_peak);
    run.rss_server = Some(watch.peak());
    server.stop();
    Ok(run)
}

/// Backs up each of `images` in turn with `upload` (its seconds), noting
/// the stored bytes after each and running `after_day`; then the server's
/// peak RSS of the ingest.
fn ingest_days(
    server: &Server,
    images: &[PathBuf],
    agent: &ureq::Agent,
    run: &mut Run,
    after_day: &mut dyn FnMut() -> anyhow::Result<()>,
    upload: &mut dyn FnMut(&Path) -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    for img in images {
        // The /metrics requests stay outside the CPU reading.
        let stages = server.stage_cpu(agent)?;
        let cpu = cpu_secs(server.child.id());
        run.ingest_s.push(upload(img)?);
        run.server_cpu_s.push(cpu_secs(server.child.id()) - cpu);
        let after = server.stage_cpu(agent)?;
        run.stage_cpu_s.push(
            after
                .into_iter()
                .map(|(stage, v)| {
                    let before = stages
                        .iter()
                        .find(|(s, _)| *s == stage)
                        .map_or(0.0, |b| b.1);
                    (stage, v - before)
                })
                .collect(),
        );
        run.stored_after
            .push(server.stats(agent)?["stored_bytes"].as_u64().unwrap_or(0));
        after_day()?;
    }
    run.rss_server_ingest = status_field(server.child.id(), "VmHWM:");
    Ok(())
}

/// User + system CPU seconds of process `pid` so far (0 if unknown).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second here).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn which(tool: &str) -> bool {
    let probe = if tool == "restic" {
        "version"
    } else {
        "--version"
    };
    Command::new(tool)
        .arg(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn du(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(path)
}

/// restic with a local repository (its default compression, auto).
fn restic(work: &Path, images: &[PathBuf]) -> anyhow::Result<Run> {
    let repo = work.join("restic");
    let r = || {
        let mut c = Command::new("restic");
        c.arg("-r")
            .arg(&repo)
            .env("RESTIC_PASSWORD", "bench")
            .arg("--no-cache");
        c
    };
    timed(r().arg("init"))?;
    let mut run = Run::default();
    for img in images {
        run.ingest_s.push(timed(r().arg("backup").arg(img))?);
        run.stored_after.push(du(&repo));
    }
    let target = work.join("restic-restore");
    run.restore_s = Some(timed(
        r().args(["restore", "latest", "--target"]).arg(&target),
    )?);
    let _ = std::fs::remove_dir_all(&target);
    Ok(run)
}

/// borg, unencrypted, `--compression zstd,3`.
fn borg(work: &Path, images: &[PathBuf]) -> anyhow::Result<Run> {
    let repo = work.join("borg");
    let b = || {
        let mut c = Command::new("borg");
        c.env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
        c
    };
    timed(b().args(["init", "-e", "none"]).arg(&repo))?;
    let mut run = Run::default();
    for (day, img) in images.iter().enumerate() {
        run.ingest_s.push(timed(
            b().args(["create", "--compression", "zstd,3"])
                .arg(format!("{}::day{day}", repo.display()))
                .arg(img),
        )?);
        run.stored_after.push(du(&repo));
    }
    let target = work.join("borg-restore");
    std::fs::create_dir_all(&target)?;
    let last = images.len() - 1;
    run.restore_s = Some(timed(
        b().arg("extract")
            .arg(format!("{}::day{last}", repo.display()))
            .current_dir(&target),
    )?);
    let _ = std::fs::remove_dir_all(&target);
    Ok(run)
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    args: &Args,
    days: u32,
    sizes: &[u64],
    l: &Limits,
    raw: &Run,
    cli: &Run,
    restic: Option<&Run>,
    borg: Option<&Run>,
) {
    let peer = |r: Option<&Run>, f: &dyn Fn(&Run) -> String| r.map_or("-".to_string(), f);
    let rate = |s: &[u64], r: &Run, i: usize| format!("{:.2} GB/s", gbps(s[i], r.ingest_s[i]));
    let last = sizes.len() - 1;
    let what = match args.images.first() {
        Some(p) => format!("image {}", p.display()),
        None => format!("SAN-like image (seed {})", args.seed),
    };
    println!(
        "bunker benchmark: {what}, {} bytes, day 0 + {days} next days; 2-core machine limits measured in the same run\n",
        sizes[0]
    );
    let raw_via = if raw.via_curl { "curl" } else { "ureq" };
    println!(
        "| measurement | bunker raw HTTP ({raw_via}) | bunker client | limit | restic | borg | ratios |"
    );
    println!("|---|---|---|---|---|---|---|");
    for i in 0..sizes.len() {
        let what = if i == 0 {
            "ingest day 0 (new)".to_string()
        } else {
            format!("ingest day {i}")
        };
        let best_peer = [restic, borg]
            .iter()
            .flatten()
            .map(|r| gbps(sizes[i], r.ingest_s[i]))
            .fold(0.0, f64::max);
        let best = gbps(sizes[i], raw.ingest_s[i]).max(gbps(sizes[i], cli.ingest_s[i]));
        let ratio = format!("{:.2}x BLAKE3", best / l.blake3_gbps);
        let vs = if best_peer > 0.0 {
            format!(", {:.1}x best peer", best / best_peer)
        } else {
            String::new()
        };
        println!(
            "| {what} | {} | {} | {:.2} GB/s BLAKE3 all cores | {} | {} | {ratio}{vs} |",
            rate(sizes, raw, i),
            rate(sizes, cli, i),
            l.blake3_gbps,
            peer(restic, &|r| rate(sizes, r, i)),
            peer(borg, &|r| rate(sizes, r, i)),
        );
    }
    for (i, &size) in sizes.iter().enumerate() {
        let per_gb = |r: &Run| {
            r.server_cpu_s.get(i).map_or("-".into(), |c| {
                format!("{:.2} core-s/GB", c / (size as f64 / 1e9))
            })
        };
        println!(
            "| server CPU, ingest day {i} (user + system) | {} | {} | | - | - | |",
            per_gb(raw),
            per_gb(cli)
        );
    }
    let rr = |r: &Run| {
        r.restore_s
            .map_or("-".into(), |s| format!("{:.2} GB/s", gbps(sizes[last], s)))
    };
    let best_restore = [raw, cli]
        .iter()
        .filter_map(|r| r.restore_s.map(|s| gbps(sizes[last], s)))
        .fold(0.0, f64::max);
    let peer_restore = [restic, borg]
        .iter()
        .flatten()
        .filter_map(|r| r.restore_s.map(|s| gbps(sizes[last], s)))
        .fold(0.0, f64::max);
    println!(
        "| restore latest to a file (verified) | {} | {} | {:.2} GB/s write+fdatasync | {} | {} | {} |",
        rr(raw),
        rr(cli),
        l.write_gbps,
        peer(restic, &rr),
        peer(borg, &rr),
        if peer_restore > 0.0 { format!("{:.1}x best peer", best_restore / peer_restore) } else { "-".into() }
    );
    let dr = |r: &Run| {
        r.drill_s
            .map_or("-".into(), |s| format!("{:.2} GB/s", gbps(sizes[last], s)))
    };
    println!(
        "| drill: restore to nowhere (verified) | {} | {} | {:.2} GB/s sequential read | - | - | |",
        dr(raw),
        dr(cli),
        l.read_gbps
    );
    let logical: u64 = sizes.iter().sum();
    for i in 0..sizes.len() {
        let st = |r: &Run| mib(r.stored_after[i]);
        let vs_restic = restic.map_or(String::new(), |r| {
            format!(
                "{:.2}x restic",
                cli.stored_after[i] as f64 / r.stored_after[i].max(1) as f64
            )
        });
        println!(
            "| repository bytes after day {i} | {} | {} | | {} | {} | {vs_restic} |",
            st(raw),
            st(cli),
            peer(restic, &st),
            peer(borg, &st)
        );
    }
    println!(
        "| reduction (logical / stored) after day {last} | {:.2}x | {:.2}x | | {} | {} | |",
        logical as f64 / raw.stored_after[last].max(1) as f64,
        logical as f64 / cli.stored_after[last].max(1) as f64,
        peer(restic, &|r| format!(
            "{:.2}x",
            logical as f64 / r.stored_after[last].max(1) as f64
        )),
        peer(borg, &|r| format!(
            "{:.2}x",
            logical as f64 / r.stored_after[last].max(1) as f64
        )),
    );
    let rss = |v: Option<u64>| v.map_or("-".into(), mib);
    println!(
        "| peak RSS, server, during the uploads | {} | {} | | | | |",
        rss(raw.rss_server_ingest),
        rss(cli.rss_server_ingest)
    );
    let both = |v: Option<(u64, u64)>| {
        v.map_or("-".into(), |(all, heap)| {
            format!("{} (heap {})", mib(all), mib(heap))
        })
    };
    println!(
        "| peak RSS, server, uploads and restores | {} | {} | | | | |",
        both(raw.rss_server),
        both(cli.rss_server)
    );
    println!("| peak RSS, client | | {} | | | | |", rss(cli.rss_client));
    print_stages(sizes, raw);
}

/// The raw HTTP run's server CPU per GB by ingest stage and day; "other"
/// is the process's CPU time no stage covers (HTTP, the kernel's socket
/// copies, scheduling, allocation).
fn print_stages(sizes: &[u64], raw: &Run) {
    if raw.stage_cpu_s.iter().all(|d| d.is_empty()) {
        return;
    }
    let days = raw.stage_cpu_s.len().min(sizes.len());
    println!("\nserver CPU per GB by stage, raw HTTP run (core-seconds per GB; bunker_ingest_cpu_seconds_total)\n");
    let head: Vec<String> = (0..days).map(|i| format!("day {i}")).collect();
    println!("| stage | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(days));
    let gb = |i: usize| sizes[i] as f64 / 1e9;
    for (k, (stage, _)) in raw.stage_cpu_s[0].iter().enumerate() {
        let cells: Vec<String> = (0..days)
            .map(|i| {
                format!(
                    "{:.3}",
                    raw.stage_cpu_s[i].get(k).map_or(0.0, |s| s.1) / gb(i)
                )
            })
            .collect();
        println!("| {stage} | {} |", cells.join(" | "));
    }
    let sum = |i: usize| raw.stage_cpu_s[i].iter().map(|s| s.1).sum::<f64>();
    let other: Vec<String> = (0..days)
        .map(|i| format!("{:.3}", (raw.server_cpu_s[i] - sum(i)).max(0.0) / gb(i)))
        .collect();
    println!(
        "| other (HTTP, kernel copies, scheduling) | {} |",
        other.join(" | ")
    );
    let total: Vec<String> = (0..days)
        .map(|i| format!("**{:.3}**", raw.server_cpu_s[i] / gb(i)))
        .collect();
    println!("| **server total** | {} |", total.join(" | "));
}

/// The scale run: the index benchmark at 50 M entries, then images of 4 GiB
/// and 32 GiB generated on the fly and uploaded raw to fresh servers, with
/// the server's RSS sampled: memory must not grow with the stream.
fn scale(bunker: &Path, bin_dir: &Path, work: &Path, skip_index: bool) -> anyhow::Result<()> {
    if !skip_index {
        let status = Command::new(bin_dir.join("bunker-index-bench"))
            .args(["--entries", "50M", "--lookups", "2M", "--dir"])
            .arg(work.join("index"))
            .status()?;
        if !status.success() {
            bail!("bunker-index-bench failed");
        }
        let _ = std::fs::remove_dir_all(work.join("index"));
    }
    let mut peaks = Vec::new();
    for gib in [4u64, 32] {
        let data = work.join(format!("scale-{gib}"));
        let server = Server::start(bunker, &data, &[])?;
        let pid = server.child.id();
        let image = Image::new(&ImageSpec::new(3, gib << 30), 0);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let started = Instant::now();
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(2));
                samples.push((
                    started.elapsed().as_secs_f64(),
                    status_field(pid, "VmRSS:").unwrap_or(0),
                    status_field(pid, "RssAnon:").unwrap_or(0),
                    status_field(pid, "RssFile:").unwrap_or(0),
                ));
            }
            samples
        });
        let mut reader = image.reader();
        let r = agent
            .put(&format!("{}/v1/snapshots/scale", server.url))
            .header("authorization", &format!("Bearer {}", server.token))
            .send(ureq::SendBody::from_reader(&mut reader))?;
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let samples = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
        let peak = status_field(pid, "VmHWM:").unwrap_or(0);
        server.stop();
        let _ = std::fs::remove_dir_all(&data);
        println!(
            "\n{gib} GiB streamed raw upload: status {}, {:.1} s, {:.2} GB/s, server peak RSS {}",
            r.status(),
            secs,
            gbps(image.len(), secs),
            mib(peak)
        );
        println!("| seconds | server RSS | heap (anonymous) | mapped files |\n|---|---|---|---|");
        for (t, rss, anon, file) in samples.iter().step_by((samples.len() / 12).max(1)) {
            println!(
                "| {t:.0} | {} | {} | {} |",
                mib(*rss),
                mib(*anon),
                mib(*file)
            );
        }
        peaks.push(peak);
    }
    println!(
        "\nserver peak RSS: 4 GiB stream {}, 32 GiB stream {} ({:+.1}%)",
        mib(peaks[0]),
        mib(peaks[1]),
        100.0 * (peaks[1] as f64 / peaks[0].max(1) as f64 - 1.0)
    );
    Ok(())
}
