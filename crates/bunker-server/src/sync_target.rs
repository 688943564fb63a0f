//! One run of a pull job: reads the job's token, connects to the source,
//! and copies the missing snapshots into this server's repository.

use crate::config::SyncJobConfig;
use crate::state::State;
use crate::sync_jobs::{Failure, Outcome};

/// Runs `job` once, on the calling (blocking) thread.
pub(crate) fn run(state: &State, job: &SyncJobConfig) -> Result<Outcome, Failure> {
    state
        .accepting()
        .map_err(|_| Failure::new("the server is shutting down"))?;
    let _source = source(job)?;
    Err(Failure::new("the sync engine is not built in yet"))
}

/// A client of the job's source with the token read from its file now.
fn source(job: &SyncJobConfig) -> Result<bunker_client::Client, Failure> {
    let path = job.token_file.display();
    let token = std::fs::read_to_string(&job.token_file)
        .map_err(|e| Failure::new(format!("reading token_file {path}: {e}")))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::new(format!("token_file {path} is empty")));
    }
    let mut client = match &job.ca_file {
        None => bunker_client::Client::new(&job.from, Some(token)),
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::new(format!("reading ca_file {}: {e}", ca.display())))?;
            bunker_client::Client::with_ca(&job.from, Some(token), &pem)
                .map_err(|e| Failure::new(format!("ca_file {}: {e}", ca.display())))?
        }
    };
    client.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    Ok(client)
}
