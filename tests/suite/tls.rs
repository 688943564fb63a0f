//! HTTPS: `bunker serve --tls-cert --tls-key` serves the API over rustls.

use std::time::Duration;

use bunker_tests::server::Server;

#[test]
fn serves_https_with_the_given_certificate() {
    let dir = bunker_tests::scratch();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let server = Server::start(
        env!("CARGO_BIN_EXE_bunker-e2e"),
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let roots =
        ureq::tls::RootCerts::new_with_certs(&[
            ureq::tls::Certificate::from_der(ck.cert.der()).to_owned()
        ]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("{}/v1/info", server.url))
        .header("authorization", &format!("Bearer {}", server.admin))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: serde_json::Value = r.body_mut().read_json().unwrap();
    assert!(info["chunker"]["avg_bytes"].as_u64().unwrap() > 0);
    // Plain HTTP to the TLS port fails; a client that does not trust the
    // certificate is refused by its own TLS check.
    let plain = server.url.replacen("https://", "http://", 1);
    let r = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .new_agent()
        .get(&format!("{plain}/healthz"))
        .call();
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
    let untrusting: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    assert!(untrusting
        .get(&format!("{}/healthz", server.url))
        .call()
        .is_err());
}
