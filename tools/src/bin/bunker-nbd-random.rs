//! Random 4 KiB reads through an NBD export, one request at a time on one
//! connection (queue depth 1, fixed newstyle, simple replies): the same
//! random offsets twice, so the first pass meets a cold cache and the
//! second a warm one. Prints reads/s of each pass as JSON.
//!
//! `bunker-nbd-random HOST:PORT EXPORT --span BYTES --reads N [--seed S]`

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[derive(Parser)]
struct Args {
    /// `127.0.0.1:10809`
    addr: String,
    /// Export name (`vol1@2`, or empty for the default).
    export: String,
    /// Reads fall in the first SPAN bytes of the export (4 KiB aligned).
    #[arg(long, value_parser = bunker_testdata::image::parse_size)]
    span: u64,
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let s = TcpStream::connect(&a.addr).with_context(|| format!("connecting to {}", a.addr))?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = BufWriter::new(s);
    let mut greeting = [0u8; 18];
    r.read_exact(&mut greeting)?;
    ensure!(
        &greeting[..16] == b"NBDMAGICIHAVEOPT",
        "not a newstyle NBD server"
    );
    w.write_all(&3u32.to_be_bytes())?;
    // GO, no information requests.
    let name = a.export.as_bytes();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name);
    opt.extend_from_slice(&0u16.to_be_bytes());
    w.write_all(&opt)?;
    w.flush()?;
    let mut size = None;
    loop {
        let mut head = [0u8; 20];
        r.read_exact(&mut head)?;
        let kind = u32::from_be_bytes(head[12..16].try_into()?);
        let len = u32::from_be_bytes(head[16..20].try_into()?) as usize;
        let mut d = vec![0u8; len];
        r.read_exact(&mut d)?;
        match kind {
            1 => break,
            3 if d[..2] == [0, 0] => size = Some(u64::from_be_bytes(d[2..10].try_into()?)),
            3 => {}
            _ => bail!("export refused: {}", String::from_utf8_lossy(&d)),
        }
    }
    let size = size.context("no export size")?;
    let blocks = a.span.min(size) / 4096;
    ensure!(blocks > 0, "span smaller than a block");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(a.seed);
    let offsets: Vec<u64> = (0..a.reads)
        .map(|_| rng.random_range(0..blocks) * 4096)
        .collect();
    let mut buf = vec![0u8; 4096];
    let mut rates = Vec::new();
    for _pass in 0..2 {
        let t = Instant::now();
        for (i, &off) in offsets.iter().enumerate() {
            let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
            m.extend_from_slice(&0u32.to_be_bytes());
            m.extend_from_slice(&(i as u64).to_be_bytes());
            m.extend_from_slice(&off.to_be_bytes());
            m.extend_from_slice(&4096u32.to_be_bytes());
            w.write_all(&m)?;
            w.flush()?;
            let mut head = [0u8; 16];
            r.read_exact(&mut head)?;
            let error = u32::from_be_bytes(head[4..8].try_into()?);
            ensure!(error == 0, "read at {off}: NBD error {error}");
            r.read_exact(&mut buf)?;
        }
        rates.push(a.reads as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "{{\"reads\": {}, \"span_bytes\": {}, \"cold_reads_per_s\": {:.0}, \"warm_reads_per_s\": {:.0}}}",
        a.reads,
        blocks * 4096,
        rates[0],
        rates[1]
    );
    Ok(())
}
