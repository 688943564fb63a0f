//! [`HttpTarget`]: a target server over its HTTP API, with a writer token.

use std::io::Read;

use bunker_api::{ErrorCode, Origin, SessionRequest, Snapshot};
use bunker_client::{Client, Committed, Error, Frame, ServerCode};

use crate::{ChunkId, Target, TargetError};

/// A target bunker server (`bunker sync --to`).
pub struct HttpTarget {
    pub client: Client,
}

impl HttpTarget {
    pub fn new(client: Client) -> HttpTarget {
        HttpTarget { client }
    }
}

/// Refusals of the data (422, 400 on a session route) are the source's
/// fault; 403 is the token's; the rest is the target's or the network's.
fn classify(e: Error) -> TargetError {
    match e {
        Error::Forbidden { message } => TargetError::Forbidden(message),
        Error::Api {
            code:
                ServerCode::Known(
                    ErrorCode::HashMismatch | ErrorCode::MissingChunk | ErrorCode::BadRequest,
                ),
            message,
            ..
        } => TargetError::Refused(message),
        other => TargetError::Failed(other.to_string()),
    }
}

impl Target for HttpTarget {
    fn snapshots(&self) -> Result<Vec<Snapshot>, TargetError> {
        self.client.list(None).map_err(classify)
    }

    fn max_chunk(&self) -> Result<u64, TargetError> {
        let info = self.client.info().map_err(classify)?;
        Ok(u64::from(info.chunker.max_bytes))
    }

    fn begin(&self, name: &str, source: &str, origin: &Origin) -> Result<String, TargetError> {
        let s = self
            .client
            .start_session(&SessionRequest {
                name: name.to_string(),
                source: Some(source.to_string()),
                origin: Some(origin.clone()),
            })
            .map_err(classify)?;
        Ok(s.id)
    }

    fn missing(&self, session: &str, ids: &[ChunkId]) -> Result<Vec<bool>, TargetError> {
        self.client.missing(session, ids).map_err(classify)
    }

    fn put_frame(&self, session: &str, id: &ChunkId, frame: &Frame) -> Result<(), TargetError> {
        self.client.put_frame(session, id, frame).map_err(classify)
    }

    fn commit(
        &self,
        session: &str,
        manifest: &mut dyn Read,
        blake3: &str,
    ) -> Result<Committed, TargetError> {
        self.client
            .commit_session(session, manifest, blake3)
            .map_err(classify)
    }

    fn abort(&self, session: &str) {
        let _ = self.client.abort_session(session);
    }
}
