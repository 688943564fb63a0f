//! Block hashes (docs/FORMAT.md, "Block hashes"): every snapshot written
//! by the client or a raw upload keeps the chaining values of its 1 MiB
//! blocks, byte for byte what anyone computes from the image; a commit
//! whose block hashes describe another image is refused; a deleted
//! snapshot takes them along.

use bunker_chunk::blocks_file::{BlocksEncoder, BlocksHeader, DEFAULT_BLOCK_LEN};
use bunker_chunk::digest::BlockHasher;
use bunker_client::{BackupOptions, Client};
use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// The block hashes file of `data`, as the format defines it.
fn expected(data: &[u8]) -> Vec<u8> {
    let mut hasher = BlockHasher::new(DEFAULT_BLOCK_LEN);
    let mut enc = BlocksEncoder::new(std::io::Cursor::new(Vec::new())).unwrap();
    hasher.update(data, |_, cv| enc.push(&cv).unwrap());
    let (_, tail) = hasher.finalize_with_tail();
    let (out, _) = enc
        .finish(DEFAULT_BLOCK_LEN, data.len() as u64, tail)
        .unwrap();
    out.into_inner()
}

fn get_blocks(server: &Server, name: &str, id: u64) -> Result<Vec<u8>, u16> {
    let resp = ureq::get(format!("{}/v1/snapshots/{name}/{id}/blocks", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    match resp.status().as_u16() {
        200 => Ok(resp.into_body().read_to_vec().unwrap()),
        other => Err(other),
    }
}

#[test]
fn block_hashes_are_kept_for_every_backup_and_go_with_the_snapshot() {
    let dir = bunker_tests::scratch();
    let data_dir = dir.path().join("data");
    let server = Server::start(BIN, &data_dir, &[]);
    let client = Client::new(&server.url, Some(server.admin.clone()));
    assert!(client.info().unwrap().block_hashes);
    let mut image = Vec::new();
    Image::new(&ImageSpec::new(5, (9 << 20) + 4321), 0)
        .write_to(&mut image)
        .unwrap();
    let want = expected(&image);
    let header = BlocksHeader::decode(&want).unwrap();
    assert_eq!((header.count, header.tail.is_some()), (9, true));

    // Through the chunk protocol (the client sends them) and raw (the
    // server computes them): the same bytes either way.
    let by_client = client
        .backup("vol", &image[..], &BackupOptions::default(), &mut |_| {})
        .unwrap()
        .snapshot;
    let raw: serde_json::Value = ureq::put(format!("{}/v1/snapshots/raw", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .send(&image[..])
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let raw_id = raw["id"].as_u64().unwrap();
    assert!(get_blocks(&server, "vol", by_client.id).unwrap() == want);
    assert!(get_blocks(&server, "raw", raw_id).unwrap() == want);
    // A small image (one block or less) has a header and no values.
    let small = client
        .backup(
            "small",
            &image[..4000],
            &BackupOptions::default(),
            &mut |_| {},
        )
        .unwrap()
        .snapshot;
    assert!(get_blocks(&server, "small", small.id).unwrap() == expected(&image[..4000]));

    // Deleted with the snapshot, file and all.
    let on_disk = data_dir.join(format!("snapshots/raw/{raw_id}.blocks"));
    assert!(on_disk.exists());
    client.delete_snapshot("raw", raw_id).unwrap();
    assert!(!on_disk.exists(), "block hashes outlived their snapshot");
    assert_eq!(get_blocks(&server, "raw", raw_id), Err(404));
}

#[test]
fn a_commit_with_block_hashes_of_another_image_is_refused() {
    let dir = bunker_tests::scratch();
    let server = Server::start(BIN, &dir.path().join("data"), &[]);
    let auth = format!("Bearer {}", server.admin);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let other: Vec<u8> = image.iter().map(|b| b ^ 1).collect();
    let session: serde_json::Value = agent
        .post(format!("{}/v1/sessions", server.url))
        .header("authorization", &auth)
        .send_json(serde_json::json!({"name": "vol"}))
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let sid = session["id"].as_str().unwrap();
    // A torn body is refused at once.
    let torn = expected(&other);
    let r = agent
        .put(format!("{}/v1/sessions/{sid}/blocks", server.url))
        .header("authorization", &auth)
        .send(&torn[..torn.len() - 1])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Whole, but of another image: the commit says so and keeps nothing.
    let r = agent
        .put(format!("{}/v1/sessions/{sid}/blocks", server.url))
        .header("authorization", &auth)
        .send(&torn[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut manifest = Vec::new();
    let chunker = bunker_chunk::Chunker::new(bunker_chunk::ChunkerParams::default());
    let mut at = 0;
    for cut in chunker.cuts(&image, true) {
        let bytes = &image[at..cut.end];
        at = cut.end;
        let id = bunker_chunk::ChunkId::of(bytes);
        let put = agent
            .put(format!(
                "{}/v1/sessions/{sid}/chunks/{}",
                server.url,
                id.to_hex()
            ))
            .header("authorization", &auth)
            .send(bytes)
            .unwrap();
        assert!(put.status().is_success());
        manifest.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        manifest.extend_from_slice(&id.0);
    }
    let commit = |body: &[u8]| {
        let mut r = agent
            .post(format!("{}/v1/sessions/{sid}/commit", server.url))
            .header("authorization", &auth)
            .header(
                bunker_api::HEADER_STREAM_HASH,
                blake3::hash(&image).to_hex().as_str(),
            )
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, text) = commit(&manifest);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("block hashes do not describe this snapshot"),
        "{text}"
    );
    let list = Client::new(&server.url, Some(server.admin.clone()))
        .list(None)
        .unwrap();
    assert!(list.is_empty(), "a refused commit left {list:?}");
}
