//! A real `bunker serve` process on 127.0.0.1 for end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running server; killed (SIGKILL) when dropped unless stopped first.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The first admin token (from `<data>/admin.token`).
    pub admin: String,
    pub data: PathBuf,
}

impl Server {
    /// Starts `bin serve --data DATA --listen 127.0.0.1:0 EXTRA...` and waits
    /// for its `bunker listening on ...` line.
    pub fn start(bin: &str, data: &Path, extra: &[&str]) -> Server {
        Server::launch(bin, data, extra, None, &[])
    }

    /// [`Server::start`] with extra environment variables (`FAILPOINTS`).
    pub fn start_with_env(bin: &str, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(bin, data, extra, None, env)
    }

    /// Like [`Server::start`], with the admin token given rather than read
    /// from `<data>/admin.token`.
    pub fn start_as(bin: &str, data: &Path, extra: &[&str], admin: Option<&str>) -> Server {
        Server::launch(bin, data, extra, admin, &[])
    }

    fn launch(
        bin: &str,
        data: &Path,
        extra: &[&str],
        admin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(bin)
            .envs(env.iter().copied())
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bunker serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("bunker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let admin = match admin {
            Some(a) => a.to_string(),
            None => std::fs::read_to_string(data.join("admin.token"))
                .expect("admin.token")
                .trim()
                .to_string(),
        };
        Server {
            child,
            url,
            admin,
            data: data.to_path_buf(),
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
