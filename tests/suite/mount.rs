//! `bunker mount` against the real server: an ext4 snapshot shown through
//! FUSE reads back byte for byte, loop-mounts, and holds exactly the files
//! of the directory it was made from; SIGTERM unmounts and leaves no mount
//! behind. Needs /dev/fuse, mkfs.ext4 and loop devices (root): without them
//! the test says NOT RUN, and fails in CI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
/// How long `bunker mount` may take to end after SIGTERM: over 10x the
/// slowest measured (0.2 s, the signal watch polls every 0.2 s).
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Whether this machine can run the test; why not otherwise (a failure in
/// CI).
fn can_run() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Err("loop mounts need root".into());
    }
    match Command::new("mkfs.ext4").arg("-V").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "mkfs.ext4: {e} (tools/nbd/install installs e2fsprogs)"
        )),
    }
}

/// Paths mounted during the test, unmounted (lazily) and the mount process
/// killed if the test fails half-way.
struct Cleanup {
    child: Option<Child>,
    mounts: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{cmd:?}: exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir))
}

#[test]
fn a_mounted_ext4_snapshot_holds_the_source_files_and_sigterm_unmounts_it() {
    if let Err(why) = can_run() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("bunker mount test needs {why} in CI");
        }
        println!("bunker mount: NOT RUN, {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("etc/deep")).unwrap();
    std::fs::write(src.join("noise.bin"), bunker_tests::noise(190, 3 << 20)).unwrap();
    std::fs::write(
        src.join("etc/deep/log.txt"),
        "a line of log\n".repeat(50_000),
    )
    .unwrap();
    std::fs::write(src.join("etc/empty"), b"").unwrap();
    std::os::unix::fs::symlink("deep/log.txt", src.join("etc/link")).unwrap();
    let img = root.join("vol.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M"));
    let image = std::fs::read(&img).unwrap();

    let server = Server::start(BIN, &root.join("data"), &[]);
    run(Command::new(BIN)
        .args(["backup", "vol"])
        .arg(&img)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", &server.admin));

    let fuse_dir = root.join("fuse");
    let mnt = root.join("mnt");
    std::fs::create_dir(&fuse_dir).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let log = root.join("mount.log");
    let mut child = Command::new(BIN)
        .args(["mount", "vol@1"])
        .arg(&fuse_dir)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", &server.admin)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run bunker mount");
    let stdout = child.stdout.take().unwrap();
    let mut cleanup = Cleanup {
        child: Some(child),
        mounts: vec![fuse_dir.clone()],
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let file = fuse_dir.join("vol@1.img");
    assert_eq!(
        line.trim(),
        file.to_str().unwrap(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(mounted(&fuse_dir));
    assert!(
        std::fs::read(&file).unwrap() == image,
        "the image reads back different"
    );
    assert!(std::fs::OpenOptions::new().write(true).open(&file).is_err());

    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&file)
        .arg(&mnt));
    cleanup.mounts.push(mnt.clone());
    let diff = run(Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "lost+found"])
        .arg(&src)
        .arg(&mnt));
    assert_eq!(diff, "");
    run(Command::new("umount").arg(&mnt));
    cleanup.mounts.pop();

    let child = cleanup.child.as_mut().unwrap();
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < STOP_BOUND,
            "bunker mount did not end within {STOP_BOUND:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("bunker mount ended {:?} after SIGTERM", started.elapsed());
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    cleanup.child = None;
    assert!(
        !mounted(&fuse_dir),
        "SIGTERM left {} mounted",
        fuse_dir.display()
    );
    assert_eq!(std::fs::read_dir(&fuse_dir).unwrap().count(), 0);
    cleanup.mounts.clear();
}
