//! `tools/bench --s3`: the same workload against a local-backend server and
//! an S3-backend server on SeaweedFS, in one run, with what object storage
//! adds to the bill and to recovery.
//!
//! SeaweedFS (`weed mini` on free ports, stopped by PID at the end) comes
//! from the shared test harness, `bunker_testdata::stores`. The S3 servers
//! reach it through [`Proxy`], which counts their requests by bill line
//! (the harness's fault proxy counts by method only); objects are
//! listed straight from SeaweedFS (not counted). Figures:
//! - ingest day 0..N (curl -T and `bunker backup`), restore to a file and
//!   drill, local and S3, and the ratio;
//! - objects in the bucket after each day, requests per GiB ingested;
//! - a cold-cache restore (the server restarted: its cache starts empty)
//!   against a plain parallel ranged GET of every pack object of the same
//!   repository through the same endpoint, `max_in_flight` in flight, and
//!   again in the shape of the server's read-ahead (8 MiB GETs, as many in
//!   flight as `read_ahead_bytes` holds) to show what bounds the restore;
//! - the time a server on an empty data directory takes to serve the whole
//!   snapshot list of a bucket: an empty prefix (the fixed cost), many small
//!   snapshots (per snapshot), the client run's repository (per chunk);
//! - the S3 servers' peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bunker_testdata::stores;

use super::proxy::{Counts, Link, Proxy};
use super::{cpu_secs, gbps, mib, Args, Run, Server};

const BUCKET: &str = "bunker-bench";
/// Bytes of one ranged GET in the plain read.
const RANGE_BYTES: u64 = 8 << 20;
/// The network the second cold restore runs over: a 1 Gbit/s link to
/// the store with 20 ms per request, where the link, not this machine's
/// two cores (which also run the store), bounds both reads.
const LINK: Link = Link {
    latency: Duration::from_millis(20),
    bytes_per_sec: 125_000_000,
};
/// A rebuild that takes longer than this is reported as a failure.
const REBUILD_WITHIN: Duration = Duration::from_secs(600);

/// One S3 run's view of the bucket after each day.
#[derive(Default)]
struct Bucket {
    objects_after: Vec<usize>,
    /// Requests during each day's upload.
    requests: Vec<Counts>,
}

struct ColdRestore {
    restore_s: f64,
    /// Pack objects (all of the repository's) and their bytes.
    packs: usize,
    pack_bytes: u64,
    /// What the restore fetched from the store.
    fetched: Counts,
    plain_get_s: f64,
    in_flight: usize,
    /// The same bytes in the read-ahead's shape: [`RANGE_BYTES`] GETs,
    /// `ahead_in_flight` at a time.
    ahead_get_s: f64,
    ahead_in_flight: usize,
    /// The restarted server's peak RSS and its sampled anonymous part.
    rss: (u64, u64),
    /// CPU seconds (user + system) the server spent on the restore.
    server_cpu_s: f64,
}

/// The rows of one cold restore: `logical` bytes restored, `ceiling` the
/// local backend's drill rate of the same snapshot (GB/s logical).
fn print_cold(title: &str, cold: &ColdRestore, logical: u64, ceiling: Option<f64>) {
    let f = &cold.fetched;
    println!("\n| {title} | |\n|---|---|");
    println!(
        "| restore latest, raw GET to /dev/null | {:.2} GB/s logical ({:.1} s); fetched {} in {} GETs ({} requests in all) |",
        gbps(logical, cold.restore_s),
        cold.restore_s,
        mib(f.down_bytes),
        f.get,
        f.requests()
    );
    println!(
        "| plain parallel ranged GET of every pack object ({} objects, {}; {} MiB ranges, {} in flight) | {:.2} GB/s ({:.1} s) |",
        cold.packs,
        mib(cold.pack_bytes),
        RANGE_BYTES >> 20,
        cold.in_flight,
        gbps(cold.pack_bytes, cold.plain_get_s),
        cold.plain_get_s
    );
    println!(
        "| the same bytes, {} in flight (the most the server's read-ahead window of {} MiB holds) | {:.2} GB/s ({:.1} s) |",
        cold.ahead_in_flight,
        bunker_s3::S3Config::default().read_ahead_bytes >> 20,
        gbps(cold.pack_bytes, cold.ahead_get_s),
        cold.ahead_get_s
    );
    println!(
        "| CPU the server spent on the restore (user + system, on 2 cores) | {:.2} s over {:.2} s |",
        cold.server_cpu_s, cold.restore_s
    );
    println!(
        "| peak RSS of that server (start and restore) | {} (heap {}) |",
        mib(cold.rss.0),
        mib(cold.rss.1)
    );
    let restore_rate = gbps(f.down_bytes, cold.restore_s);
    println!(
        "| restore / plain GET (bytes from the store per second: {:.2} GB/s against {:.2} GB/s) | {:.2}x |",
        restore_rate,
        gbps(cold.pack_bytes, cold.plain_get_s),
        restore_rate / gbps(cold.pack_bytes, cold.plain_get_s).max(1e-12)
    );
    // The restore decodes (zstd) and checks (BLAKE3) every chunk on the
    // same cores: it cannot pass the local backend's drill of the same
    // snapshot, which reads the same records from disk.
    if let Some(local) = ceiling {
        let bytes_per_sec = f.down_bytes as f64 / (logical as f64 / (local * 1e9)) / 1e9;
        println!(
            "| decode ceiling: the same bytes at the local backend's drill rate ({local:.2} GB/s logical) over plain GET | {:.2}x |",
            bytes_per_sec / gbps(cold.pack_bytes, cold.plain_get_s).max(1e-12)
        );
    }
}

/// Seconds to rebuild a server from a prefix of the bucket, and what the
/// prefix held.
#[derive(Default)]
struct Rebuilt {
    secs: f64,
    snapshots: u64,
    chunks: u64,
    packs: u64,
}

/// An empty prefix (the fixed cost of a start), many small snapshots and
/// the client run's repository.
struct Rebuild {
    empty: Rebuilt,
    small: Rebuilt,
    large: Rebuilt,
}

pub(super) fn run(
    bunker: &Path,
    work: &Path,
    images: &[PathBuf],
    sizes: &[u64],
    args: &Args,
    days: u32,
) -> anyhow::Result<()> {
    let store = stores::Store::seaweedfs()
        .context("SeaweedFS (`weed`) is not installed: run tools/s3/install")?;
    store.create_bucket(BUCKET);
    let proxy = Proxy::start(&store.endpoint)?;
    // The server's flags for `prefix`, reaching the store through `via`.
    let flags_via = |prefix: &str, via: &Proxy| -> Vec<String> {
        [
            "--s3",
            &format!("s3://{BUCKET}/{prefix}"),
            "--s3-endpoint",
            &via.url,
            "--s3-allow-http",
            "--s3-anonymous",
        ]
        .map(String::from)
        .to_vec()
    };
    let flags = |prefix: &str| flags_via(prefix, &proxy);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let none = &mut || Ok(());
    eprintln!("local backend: raw, client");
    let raw_local = super::bunker_raw(bunker, &work.join("raw-local"), &[], images, &agent, none)?;
    let cli_local =
        super::bunker_client(bunker, &work.join("cli-local"), &[], images, &agent, none)?;

    eprintln!("S3 backend: raw, client");
    let observe = |prefix: &str, into: &mut Bucket, last: &mut Counts| -> anyhow::Result<()> {
        into.objects_after
            .push(list(&store.endpoint, prefix)?.len());
        let now = proxy.counts();
        into.requests.push(now.since(last));
        *last = now;
        Ok(())
    };
    let (mut raw_bucket, mut cli_bucket) = (Bucket::default(), Bucket::default());
    let mut last = proxy.counts();
    let raw_s3 = super::bunker_raw(
        bunker,
        &work.join("raw-s3"),
        &flags("raw"),
        images,
        &agent,
        &mut || observe("raw", &mut raw_bucket, &mut last),
    )?;
    let mut last = proxy.counts();
    let cli_s3 = super::bunker_client(
        bunker,
        &work.join("cli-s3"),
        &flags("cli"),
        images,
        &agent,
        &mut || observe("cli", &mut cli_bucket, &mut last),
    )?;

    eprintln!("cold-cache restore and plain parallel GET");
    let cold = cold_restore(bunker, work, &flags("raw"), &store.endpoint, &proxy)?;
    eprintln!("the same over a 1 Gbit/s link with 20 ms per request");
    let link = Proxy::start_over(&store.endpoint, Some(LINK))?;
    let over_link = flags_via("raw", &link);
    let cold_link = cold_restore(bunker, work, &over_link, &store.endpoint, &link)?;

    eprintln!("rebuild from the bucket");
    let rebuild = rebuild(bunker, work, &flags, &agent, args.s3_snapshots)?;

    print_table(
        args,
        days,
        sizes,
        [&raw_local, &raw_s3, &cli_local, &cli_s3],
        [&raw_bucket, &cli_bucket],
        [&cold, &cold_link],
        &rebuild,
    );
    Ok(())
}

/// Restarts a server on the raw run's data directory (the cache starts
/// empty), GETs the latest snapshot to nowhere, then reads every pack object
/// of that repository with plain ranged GETs through the same endpoint.
fn cold_restore(
    bunker: &Path,
    work: &Path,
    flags: &[String],
    endpoint: &str,
    proxy: &Proxy,
) -> anyhow::Result<ColdRestore> {
    let server = Server::start(bunker, &work.join("raw-s3"), flags)?;
    let mut watch = super::RssWatch::start(server.child.id());
    let cpu_before = cpu_secs(server.child.id());
    let before = proxy.counts();
    let t = Instant::now();
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg(format!("{}/v1/snapshots/vol/latest/data", server.url))
        .output()
        .context("running curl")?;
    let restore_s = t.elapsed().as_secs_f64();
    let status = String::from_utf8_lossy(&o.stdout);
    if status.trim() != "200" {
        bail!("cold restore answered {status}");
    }
    let fetched = proxy.counts().since(&before);
    let server_cpu_s = cpu_secs(server.child.id()) - cpu_before;
    let rss = watch.peak();
    server.stop();

    let packs: Vec<(String, u64)> = list(endpoint, "raw")?
        .into_iter()
        .filter(|(k, _)| k.starts_with("raw/packs/") && k.ends_with(".pack"))
        .collect();
    let pack_bytes = packs.iter().map(|(_, n)| n).sum();
    let defaults = bunker_s3::S3Config::default();
    let in_flight = defaults.max_in_flight;
    let plain_get_s = plain_get(&proxy.url, &packs, RANGE_BYTES, in_flight)?;
    // The window holds read_ahead_bytes of GETs in flight or not yet read.
    let ahead_in_flight = ((defaults.read_ahead_bytes / RANGE_BYTES) as usize).clamp(1, in_flight);
    let ahead_get_s = plain_get(&proxy.url, &packs, RANGE_BYTES, ahead_in_flight)?;
    Ok(ColdRestore {
        restore_s,
        packs: packs.len(),
        pack_bytes,
        fetched,
        plain_get_s,
        in_flight,
        ahead_get_s,
        ahead_in_flight,
        rss,
        server_cpu_s,
    })
}

/// Every byte of `objects` in ranges of `range_bytes`, `in_flight` GETs at
/// a time: the seconds it took.
fn plain_get(
    endpoint: &str,
    objects: &[(String, u64)],
    range_bytes: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let ranges: Vec<(String, u64, u64)> = objects
        .iter()
        .flat_map(|(key, len)| {
            (0..len.div_ceil(range_bytes)).map(move |i| {
                let start = i * range_bytes;
                (key.clone(), start, (start + range_bytes).min(*len) - 1)
            })
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .max_idle_connections_per_host(in_flight)
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..in_flight)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, first, last)) = ranges.get(i) else {
                            return Ok(());
                        };
                        let r = agent
                            .get(&format!("{endpoint}/{BUCKET}/{key}"))
                            .header("range", &format!("bytes={first}-{last}"))
                            .call()
                            .with_context(|| format!("GET {key}"))?;
                        let n =
                            std::io::copy(&mut r.into_body().into_reader(), &mut std::io::sink())?;
                        if n != last - first + 1 {
                            bail!("GET {key} {first}-{last}: {n} bytes");
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("GET worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds from starting a server on an empty data directory on `prefix`
/// until `/healthz` answers and `snapshots` are listed.
fn time_rebuild(
    bunker: &Path,
    data: &Path,
    flags: &[String],
    agent: &ureq::Agent,
    snapshots: u64,
    token: Option<&str>,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(data);
    let t = Instant::now();
    let server = Server::start_as(bunker, data, flags, token)?;
    loop {
        let healthy = agent
            .get(&format!("{}/healthz", server.url))
            .call()
            .is_ok_and(|r| r.status() == 200);
        let listed = healthy
            && agent
                .get(&format!("{}/v1/snapshots", server.url))
                .header("authorization", &format!("Bearer {}", server.token))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
                .and_then(|v| v["snapshots"].as_array().map(|a| a.len() as u64))
                == Some(snapshots);
        if listed {
            break;
        }
        if t.elapsed() > REBUILD_WITHIN {
            server.stop();
            bail!("no complete snapshot list after {REBUILD_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    server.stop();
    let _ = std::fs::remove_dir_all(data);
    Ok(secs)
}

/// Rebuild times: an empty prefix, `count` small snapshots made here with
/// raw uploads, and the client run's repository.
fn rebuild(
    bunker: &Path,
    work: &Path,
    flags: &dyn Fn(&str) -> Vec<String>,
    agent: &ureq::Agent,
    count: u32,
) -> anyhow::Result<Rebuild> {
    let empty_s = time_rebuild(
        bunker,
        &work.join("rebuild-empty"),
        &flags("empty"),
        agent,
        0,
        None,
    )?;

    let server = Server::start(bunker, &work.join("small"), &flags("small"))?;
    let mut body = vec![0u8; 64 << 10];
    for i in 0..count {
        // Distinct bytes per snapshot: each brings its own chunk.
        for (j, b) in body.iter_mut().enumerate() {
            *b = (j as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(i)
                .to_le_bytes()[j % 4];
        }
        let r = agent
            .put(&format!("{}/v1/snapshots/small-{}", server.url, i % 20))
            .header("authorization", &format!("Bearer {}", server.token))
            .send(&body[..])?;
        if r.status() != 201 {
            bail!("small snapshot {i} answered {}", r.status());
        }
    }
    server.stop();
    let small = rebuilt(bunker, work, "small", flags, agent)?;
    let large = rebuilt(bunker, work, "cli", flags, agent)?;
    Ok(Rebuild {
        empty: Rebuilt {
            secs: empty_s,
            ..Rebuilt::default()
        },
        small,
        large,
    })
}

/// What the server on `prefix` (data directory `work/<prefix>-s3` or
/// `work/<prefix>`) holds, then the time a new one takes from the bucket.
fn rebuilt(
    bunker: &Path,
    work: &Path,
    prefix: &str,
    flags: &dyn Fn(&str) -> Vec<String>,
    agent: &ureq::Agent,
) -> anyhow::Result<Rebuilt> {
    let data = match prefix {
        "cli" => work.join("cli-s3"),
        _ => work.join(prefix),
    };
    let server = Server::start(bunker, &data, &flags(prefix))?;
    let stats = server.stats(agent)?;
    let token = server.token.clone();
    server.stop();
    let field = |k: &str| stats[k].as_u64().unwrap_or(0);
    let snapshots = field("snapshots");
    Ok(Rebuilt {
        secs: time_rebuild(
            bunker,
            &work.join(format!("rebuild-{prefix}")),
            &flags(prefix),
            agent,
            snapshots,
            Some(&token),
        )?,
        snapshots,
        chunks: field("chunks"),
        packs: field("packs"),
    })
}

/// Keys and sizes under `prefix/`, listed straight from the store.
fn list(endpoint: &str, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!(
            "{endpoint}/{BUCKET}?list-type=2&prefix={}",
            encode(&format!("{prefix}/"))
        );
        if let Some(t) = &token {
            url.push_str(&format!("&continuation-token={}", encode(t)));
        }
        let body = ureq::get(&url)
            .call()
            .with_context(|| format!("listing {BUCKET}/{prefix}"))?
            .body_mut()
            .read_to_string()?;
        for entry in body.split("<Contents>").skip(1) {
            let key = between(entry, "<Key>", "</Key>").context("listing entry without a key")?;
            let size = between(entry, "<Size>", "</Size>")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            out.push((key.to_string(), size));
        }
        token = match between(&body, "<IsTruncated>", "</IsTruncated>") {
            Some("true") => Some(
                between(&body, "<NextContinuationToken>", "</NextContinuationToken>")
                    .context("truncated listing without a continuation token")?
                    .to_string(),
            ),
            _ => return Ok(out),
        };
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let rest = &s[s.find(open)? + open.len()..];
    Some(&rest[..rest.find(close)?])
}

/// Percent-encoding of a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    args: &Args,
    days: u32,
    sizes: &[u64],
    [raw_local, raw_s3, cli_local, cli_s3]: [&Run; 4],
    [raw_bucket, cli_bucket]: [&Bucket; 2],
    [cold, cold_link]: [&ColdRestore; 2],
    rebuild: &Rebuild,
) {
    let last = sizes.len() - 1;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "bunker on object storage: SAN-like image {} bytes (seed {}), day 0 + {days} next days; \
         local backend and S3 on SeaweedFS (weed mini on 127.0.0.1, through a counting proxy) in the same run\n",
        sizes[0], args.seed
    );
    println!("| measurement | local | S3 (SeaweedFS) | S3/local |");
    println!("|---|---|---|---|");
    let row = |what: &str, bytes: u64, local: Option<f64>, s3: Option<f64>| {
        let (Some(l), Some(s)) = (local, s3) else {
            return;
        };
        let (l, s) = (gbps(bytes, l), gbps(bytes, s));
        println!(
            "| {what} | {l:.2} GB/s | {s:.2} GB/s | {:.2}x |",
            if l > 0.0 { s / l } else { 0.0 }
        );
    };
    for (i, &size) in sizes.iter().enumerate() {
        let day = if i == 0 {
            "day 0 (new)".to_string()
        } else {
            format!("day {i}")
        };
        row(
            &format!("ingest {day}, raw HTTP (curl -T)"),
            size,
            Some(raw_local.ingest_s[i]),
            Some(raw_s3.ingest_s[i]),
        );
        row(
            &format!("ingest {day}, bunker backup"),
            size,
            Some(cli_local.ingest_s[i]),
            Some(cli_s3.ingest_s[i]),
        );
    }
    row(
        "restore latest to a file, raw GET (curl -o)",
        sizes[last],
        raw_local.restore_s,
        raw_s3.restore_s,
    );
    row(
        "restore latest to a file, bunker restore",
        sizes[last],
        cli_local.restore_s,
        cli_s3.restore_s,
    );
    row(
        "drill, raw GET to /dev/null",
        sizes[last],
        raw_local.drill_s,
        raw_s3.drill_s,
    );
    row(
        "drill, bunker drill",
        sizes[last],
        cli_local.drill_s,
        cli_s3.drill_s,
    );
    let rss = |r: &Run| {
        r.rss_server.map_or("-".to_string(), |(all, heap)| {
            format!("{} (heap {})", mib(all), mib(heap))
        })
    };
    println!(
        "| peak RSS, server, raw run | {} | {} | |",
        rss(raw_local),
        rss(raw_s3)
    );
    println!(
        "| peak RSS, server, client run | {} | {} | |",
        rss(cli_local),
        rss(cli_s3)
    );

    println!("\n| bucket (S3 runs) | raw HTTP | bunker backup |\n|---|---|---|");
    let mut logical = 0u64;
    for (i, size) in sizes.iter().enumerate() {
        logical += size;
        println!(
            "| objects after day {i} ({:.2} GiB logical so far) | {} ({:.1}/GiB) | {} ({:.1}/GiB) |",
            gib(logical),
            raw_bucket.objects_after[i],
            raw_bucket.objects_after[i] as f64 / gib(logical),
            cli_bucket.objects_after[i],
            cli_bucket.objects_after[i] as f64 / gib(logical),
        );
    }
    let per_gib = |b: &Bucket| {
        let total = b.requests.iter().fold(Counts::default(), |a, c| Counts {
            put: a.put + c.put,
            get: a.get + c.get,
            head: a.head + c.head,
            list: a.list + c.list,
            delete: a.delete + c.delete,
            multipart: a.multipart + c.multipart,
            unparsed: a.unparsed + c.unparsed,
            down_bytes: a.down_bytes + c.down_bytes,
        });
        let g = gib(logical);
        format!(
            "{:.1}: PUT {:.1}, GET {:.1}, HEAD {:.1}, LIST {:.1}, DELETE {:.1}, multipart {:.1}{}",
            total.requests() as f64 / g,
            total.put as f64 / g,
            total.get as f64 / g,
            total.head as f64 / g,
            total.list as f64 / g,
            total.delete as f64 / g,
            total.multipart as f64 / g,
            if total.unparsed > 0 {
                format!(", other {:.1}", total.unparsed as f64 / g)
            } else {
                String::new()
            }
        )
    };
    println!(
        "| requests per GiB ingested, all days (server start included) | {} | {} |",
        per_gib(raw_bucket),
        per_gib(cli_bucket)
    );

    let ceiling = raw_local.drill_s.map(|s| gbps(sizes[last], s));
    print_cold(
        "cold cache (raw run's repository, server restarted)",
        cold,
        sizes[last],
        ceiling,
    );
    print_cold(
        &format!(
            "the same over a shaped link to the store ({} MB/s shared, {} ms per request)",
            LINK.bytes_per_sec / 1_000_000,
            LINK.latency.as_millis()
        ),
        cold_link,
        sizes[last],
        ceiling,
    );

    println!("\n| rebuild from the bucket (empty data directory until the snapshot list is complete) | |\n|---|---|");
    let fixed = rebuild.empty.secs;
    println!("| empty prefix (fixed cost of a start) | {fixed:.2} s |");
    for (what, r) in [
        ("small snapshots", &rebuild.small),
        ("client run", &rebuild.large),
    ] {
        println!(
            "| {what}: {} snapshots, {} chunks, {} packs | {:.2} s |",
            r.snapshots, r.chunks, r.packs, r.secs
        );
    }
    let (small, large) = (&rebuild.small, &rebuild.large);
    println!(
        "| per 1,000 snapshots (small snapshots, fixed cost subtracted) | {:.1} s |",
        (small.secs - fixed).max(0.0) / small.snapshots.max(1) as f64 * 1000.0
    );
    println!(
        "| per million chunks (client run, fixed cost subtracted; {:.0} chunks per pack) | {:.1} s |",
        large.chunks as f64 / large.packs.max(1) as f64,
        (large.secs - fixed).max(0.0) / large.chunks.max(1) as f64 * 1e6
    );
}
