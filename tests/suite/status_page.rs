//! The status page in a real browser, `GET /v1/status`, and the Grafana
//! dashboard against a real server's `/metrics`.
//!
//! The page test drives headless Chromium (tools/ui/install) over the
//! DevTools protocol on a pipe: it types a scoped token into the page's
//! form, waits for the page to draw, and reads the DOM. Without Chromium
//! the test says so loudly and skips, except under CI, where that is a
//! failure. `BUNKER_UPDATE_SCREENSHOT=1` also writes the screenshot to
//! docs/status-page.png.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bunker_tests::server::Server;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const DAY_MS: i64 = 86_400_000;

/// Shown as the source of `db-1`'s newest snapshot: markup that would run
/// or change the page if it were parsed as HTML anywhere.
const HOSTILE: &str =
    "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script> & \"q\"";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Commits `data` (one chunk) as a copy of snapshot `origin_id` of another
/// repository created `days_ago` days ago: the chunk protocol keeps an
/// origin's creation time, which is how a test gets snapshots on past days.
fn commit_on_day(server: &Server, name: &str, origin_id: u64, days_ago: i64, source: &str) {
    let data: Vec<u8> = bunker_tests::noise(origin_id, 30_000 + 7_000 * origin_id as usize)
        .into_iter()
        .chain(format!("{name} {origin_id}\n").repeat(4000).into_bytes())
        .collect();
    let auth = format!("Bearer {}", server.admin);
    let a = agent();
    let session: Value = a
        .post(format!("{}/v1/sessions", server.url))
        .header("authorization", &auth)
        .send_json(json!({
            "name": name, "source": source,
            "origin": {"repository_id": "0123456789abcdef0123456789abcdef", "snapshot_id": origin_id,
                       "name": name, "created_unix_ms": now_ms() - days_ago * DAY_MS - 60_000},
        }))
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let sid = session["id"].as_str().expect("a session id");
    let id = blake3::hash(&data);
    let put = a
        .put(format!(
            "{}/v1/sessions/{sid}/chunks/{}",
            server.url,
            id.to_hex()
        ))
        .header("authorization", &auth)
        .header("content-encoding", "zstd")
        .send(&zstd::encode_all(&data[..], 3).unwrap()[..])
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let mut manifest = (data.len() as u64).to_le_bytes().to_vec();
    manifest.extend_from_slice(id.as_bytes());
    let commit = a
        .post(format!("{}/v1/sessions/{sid}/commit", server.url))
        .header("authorization", &auth)
        .header("x-bunker-stream-hash", id.to_hex().as_str())
        .send(&manifest[..])
        .unwrap();
    assert_eq!(commit.status().as_u16(), 201, "commit {name}");
}

fn call(server: &Server, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let url = format!("{}{path}", server.url);
    let auth = format!("Bearer {token}");
    let a = agent();
    let r = match (method, body) {
        ("GET", _) => a.get(url).header("authorization", &auth).call(),
        (_, Some(b)) => a.post(url).header("authorization", &auth).send_json(b),
        (_, None) => a.post(url).header("authorization", &auth).send_empty(),
    }
    .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.into_body().read_json().unwrap_or(Value::Null);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// A server with snapshots of `db-1` on 8 days, `db.logs` on 4, `other`
/// (outside the scope) on 3, all verified; `db.logs` drilled, `db-1`'s
/// newest drill failed; one pull job of `db-` from a source that is not
/// there. Returns the server and a reader token scoped to `db`.
fn seeded(dir: &Path) -> (Server, String) {
    let conf = dir.join("bunker.toml");
    let token_file = dir.join("source.token");
    std::fs::write(&token_file, "bkr_0000000000000000_00").unwrap();
    // Encrypted, so the page has a key id to show.
    let key_file = dir.join("repo.key");
    bunker_tests::test_key().create_file(&key_file).unwrap();
    std::fs::write(
        &conf,
        format!(
            "drill_interval_secs = 86400\n[encryption]\nkey_file = {:?}\n[[sync]]\nname = \"site-a\"\nfrom = \"http://127.0.0.1:9\"\n\
             token_file = {:?}\nnames = [\"db-\"]\ninterval = \"1h\"\n",
            key_file, token_file
        ),
    )
    .unwrap();
    let server = Server::start(
        BIN,
        &dir.join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut k = 1;
    for (name, days) in [("db-1", 8), ("db.logs", 4), ("other", 3)] {
        for d in (0..days).rev() {
            let source = if name == "db-1" && d == 0 {
                HOSTILE.to_string()
            } else {
                format!("host{k}:/dev/sdb")
            };
            commit_on_day(&server, name, k, d * 2, &source);
            k += 1;
        }
    }
    let admin = server.admin.clone();
    call(&server, "POST", "/v1/verify", &admin, None);
    let drill = |name: &str, body: Value| {
        call(
            &server,
            "POST",
            &format!("/v1/snapshots/{name}/latest/drill"),
            &admin,
            Some(body),
        );
    };
    drill("db.logs", json!({"verify": "server"}));
    drill(
        "db-1",
        json!({"ok": false, "bytes": 0, "seconds": 0.2,
               "error": "<b>read error</b> at <script>alert(1)</script>"}),
    );
    let created = call(
        &server,
        "POST",
        "/v1/tokens",
        &admin,
        Some(json!({"role": "reader", "scope": "db", "name": "wall screen"})),
    );
    let token = created["token"].as_str().unwrap().to_string();
    (server, token)
}

#[test]
fn status_endpoint_counts_bytes_per_day_within_the_token_scope() {
    let dir = bunker_tests::scratch();
    let (server, scoped) = seeded(dir.path());
    let st = call(&server, "GET", "/v1/status", &scoped, None);
    let names: Vec<&str> = st["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db-1", "db.logs"], "{st}");
    assert_eq!(st["drill_interval_seconds"], 86400);
    let db1 = &st["names"][0];
    assert_eq!(db1["snapshots"], 8);
    let per_day: Vec<u64> = db1["stored_bytes_per_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per_day.len(), 30);
    // One snapshot every other day, the newest today (a minute ago: at
    // most one day earlier just after midnight).
    let days_with_data = per_day.iter().filter(|&&b| b > 0).count();
    assert_eq!(days_with_data, 8, "{per_day:?}");
    assert!(per_day[28] > 0 || per_day[29] > 0);
    assert_eq!(db1["last_drill"]["ok"], false);
    assert_eq!(db1["last_verify"]["ok"], true);
    assert_eq!(db1["latest"]["source"], HOSTILE);
    assert!(db1["dedup_ratio"].as_f64().unwrap() >= 1.0);
    assert!(db1["compression_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(st["names"][1]["last_drill"]["ok"], true);
    assert!(st["space"]["free_bytes"].as_u64().unwrap() > 0);
    assert!(st["space"]["growth_bytes_per_day"].as_f64().unwrap() > 0.0);
    assert!(st["space"]["full_in_days"].as_f64().unwrap() > 0.0);
    // The admin sees every name; the growth forecast is the same for both
    // (but for the milliseconds between the two answers).
    let all = call(&server, "GET", "/v1/status", &server.admin, None);
    assert_eq!(all["names"].as_array().unwrap().len(), 3);
    let growth = |v: &Value| v["space"]["growth_bytes_per_day"].as_f64().unwrap();
    assert!((growth(&all) / growth(&st) - 1.0).abs() < 1e-3);
    // No token, no figures; the page itself needs none and holds none.
    let a = agent();
    let r = a.get(format!("{}/v1/status", server.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = a.get(format!("{}/", server.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let page = r.into_body().read_to_string().unwrap();
    assert!(!page.contains("db-1"));
    let r = a
        .post(format!("{}/ui/app.js", server.url))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

/// Where Chromium is, or `None` after a loud skip (a failure under CI).
fn chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(name.to_string());
        }
    }
    let msg = "chromium is not installed: run tools/ui/install. The status page test is SKIPPED.";
    if std::env::var_os("CI").is_some() {
        panic!("{msg} CI must run it.");
    }
    eprintln!("\n{}\n!!! {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
    None
}

/// Headless Chromium spoken to over `--remote-debugging-pipe`: commands
/// go to its fd 3 and answers come from its fd 4, each message JSON ended
/// by a NUL byte.
struct Browser {
    child: Child,
    to: std::process::ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
}

impl Browser {
    fn launch(bin: &str, profile: &Path) -> Browser {
        // The shell moves its stdin and stdout pipes to the fds 3 and 4
        // Chromium expects, then becomes Chromium.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec 3<&0 4>&1 </dev/null >/dev/null; exec "$0" "$@""#)
            .arg(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start chromium");
        let to = child.stdin.take().unwrap();
        let from_read = child.stdout.take().unwrap();
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(from_read);
            loop {
                let mut buf = Vec::new();
                match std::io::BufRead::read_until(&mut reader, 0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to,
            from,
            next_id: 1,
        }
    }

    /// Sends a command (to the page when `session` is given) and waits up
    /// to 20 s for its answer; events in between are dropped.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method}: {e}"));
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `expr` in the page; its value (JSON-able).
fn eval(b: &mut Browser, page: &str, expr: &str) -> Value {
    let r = b.send(
        Some(page),
        "Runtime.evaluate",
        json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
    );
    assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
    r["result"]["value"].clone()
}

/// Polls `expr` until it is true; the page is given 10 s.
fn wait_for(b: &mut Browser, page: &str, expr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while eval(b, page, expr) != json!(true) {
        let state = eval(b, page, "(document.body ? document.body.dataset.state : '') + ' ' + (document.getElementById('message')?.textContent ?? '')");
        assert!(
            Instant::now() < deadline,
            "the page never got to {expr}: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_page_in_a_browser_shows_the_scoped_names_as_text() {
    let Some(bin) = chromium() else { return };
    let started = Instant::now();
    let dir = bunker_tests::scratch();
    let (server, scoped) = seeded(dir.path());
    let mut b = Browser::launch(&bin, &dir.path().join("profile"));
    let target = b.send(None, "Target.createTarget", json!({"url": "about:blank"}));
    let attached = b.send(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    let page = attached["sessionId"].as_str().unwrap().to_string();
    let page = page.as_str();
    b.send(
        Some(page),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 820, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.send(
        Some(page),
        "Page.navigate",
        json!({"url": format!("{}/", server.url)}),
    );
    wait_for(
        &mut b,
        page,
        "document.readyState === 'complete' && document.body.dataset.state === 'login'",
    );
    // Typed into the form, as a person would; the page keeps it in
    // sessionStorage and sends it only as a header.
    eval(
        &mut b,
        page,
        &format!(
            "document.getElementById('token').value = {}; document.getElementById('token-form').requestSubmit(); true",
            json!(scoped)
        ),
    );
    wait_for(&mut b, page, "document.body.dataset.state === 'loaded'");
    let seen = eval(
        &mut b,
        page,
        r#"(() => {
            const rows = [...document.querySelectorAll('#names tbody tr')];
            const cell = (r, i) => r.cells[i];
            return {
                names: rows.map(r => r.dataset.name),
                verify: rows.map(r => cell(r, 7).dataset.check),
                drill: rows.map(r => cell(r, 8).dataset.check),
                drill_class: rows.map(r => cell(r, 8).className),
                drill_title: rows.map(r => cell(r, 8).getAttribute('title')),
                source: rows.map(r => cell(r, 3).textContent),
                sparkline_bars: rows.map(r => r.querySelectorAll('svg rect.bar').length),
                growth_titles: [...document.querySelectorAll('#growth svg rect title')].length,
                day_rows: document.querySelectorAll('#days tbody tr').length,
                jobs: [...document.querySelectorAll('#sync tbody tr')].map(r => r.dataset.job),
                injected: document.querySelectorAll('#main img, #main script, #main b').length,
                scripts: document.querySelectorAll('script').length,
                title: document.title,
                text: document.body.innerText,
                cards: Object.fromEntries([...document.querySelectorAll('#totals div')]
                    .map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent])),
                token_kept: sessionStorage.getItem('bunker-token') !== null,
                input_left: document.getElementById('token').value,
                url: location.href,
            };
        })()"#,
    );
    assert_eq!(seen["names"], json!(["db-1", "db.logs"]), "{seen}");
    let text = seen["text"].as_str().unwrap();
    assert!(!text.contains("other"), "a name outside the scope: {text}");
    assert_eq!(seen["verify"], json!(["passed", "passed"]));
    assert_eq!(seen["drill"], json!(["failed", "passed"]));
    assert_eq!(seen["drill_class"], json!(["check bad", "check ok"]));
    let failed = seen["drill_title"][0].as_str().unwrap();
    assert!(failed.contains("<script>alert(1)</script>"), "{failed}");
    // The hostile source is shown as the very text it is, and none of its
    // markup became an element or ran.
    assert_eq!(seen["source"][0], HOSTILE);
    assert!(text.contains(HOSTILE));
    assert_eq!(seen["injected"], 0);
    assert_eq!(seen["scripts"], 1);
    assert_eq!(seen["title"], "bunker status");
    assert_eq!(seen["sparkline_bars"], json!([8, 4]));
    assert!(seen["growth_titles"].as_u64().unwrap() >= 8);
    assert_eq!(seen["day_rows"], 30);
    assert_eq!(seen["jobs"], json!(["site-a"]));
    let key_id = bunker_tests::test_key().id().to_string();
    assert_eq!(
        seen["cards"]["encryption"],
        format!("AES-256-GCM, key {key_id}"),
        "{seen}"
    );
    assert_eq!(seen["cards"]["storage"], "local", "{seen}");
    assert_eq!(seen["token_kept"], true);
    assert_eq!(seen["input_left"], "");
    assert_eq!(seen["url"], format!("{}/", server.url));

    let shot = b.send(
        Some(page),
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let saved = dir.path().join("status-page.png");
    std::fs::write(&saved, &png).unwrap();
    if std::env::var("BUNKER_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png");
        std::fs::write(&docs, &png).unwrap();
        eprintln!("wrote {}", docs.display());
    }
    // The dark scheme is the page's own, not the browser's default.
    let background = "getComputedStyle(document.body).backgroundColor";
    let light = eval(&mut b, page, background);
    b.send(
        Some(page),
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    );
    let dark = eval(&mut b, page, background);
    assert_eq!(light, "rgb(255, 255, 255)");
    assert_eq!(dark, "rgb(17, 20, 24)");
    let shot = b.send(
        Some(page),
        "Page.captureScreenshot",
        json!({"format": "png"}),
    );
    let dark_png = base64_decode(shot["data"].as_str().unwrap());
    std::fs::write(dir.path().join("status-page-dark.png"), &dark_png).unwrap();
    let _ = b.send(None, "Browser.close", json!({}));
    eprintln!(
        "status page test: {:.1} s, screenshot {} ({} bytes)",
        started.elapsed().as_secs_f64(),
        saved.display(),
        png.len()
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for group in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let take = group.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// The metric names a scrape announces (`# TYPE` lines; a histogram's
/// `_bucket`, `_sum` and `_count` series too).
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            out.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

#[test]
fn grafana_dashboard_uses_only_exported_and_documented_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    std::fs::File::open(root.join("contrib/grafana/bunker.json"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard parses");
    let mut used = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_string());
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("bunker_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    for want in [
        "Ingest",
        "New bytes per day",
        "Dedup ratio",
        "Restores",
        "Drill age",
        "GC reclaimed",
        "Errors by code",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "no panel {want:?} in {titles:?}"
        );
    }

    // A real server with a pull job, checks, a GC and an error, so that
    // every family is in its scrape.
    let dir = bunker_tests::scratch();
    let (server, _) = seeded(dir.path());
    call(&server, "POST", "/v1/gc", &server.admin, None);
    let r = agent()
        .get(format!("{}/v1/stats", server.url))
        .header("authorization", "Bearer nope")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let metrics = agent()
        .get(format!("{}/metrics", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let names = exported(&metrics);
    assert!(names.len() > 20, "{names:?}");
    assert!(used.len() >= 7, "the dashboard's queries name {used:?}");
    let missing: Vec<&String> = used.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export"
    );
    // Every exported name is in docs/API.md's table, with its unit.
    let api = std::fs::read_to_string(root.join("docs/API.md")).unwrap();
    for name in &names {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            api.lines()
                .any(|l| l.starts_with(&format!("| `{base}`")) && l.matches('|').count() >= 4),
            "{name} is not in the metrics table of docs/API.md"
        );
    }
}
