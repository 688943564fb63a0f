//! `GET /v1/sync`: the scheduled pull jobs and how they are doing
//! (`crate::sync_jobs`). For admins and readers; a scoped token sees only
//! the jobs whose names all lie inside its scope (a job of every name is
//! for unscoped tokens only).

use std::sync::Arc;

use bunker_api::{Role, SyncJobs};
use hyper::StatusCode;

use super::{blocking, require};
use crate::reply::{json_response, Reply};
use crate::state::State;
use crate::tokens::Principal;

/// Whether `p` may see pull jobs at all (their figures in `/metrics` too:
/// unscoped admins and readers).
pub(super) fn sees_jobs(p: &Principal) -> bool {
    matches!(p.role, Role::Admin | Role::Reader) && p.scope.is_none()
}

fn sees_job(p: &Principal, names: &[String]) -> bool {
    p.scope.is_none() || (!names.is_empty() && names.iter().all(|n| p.reaches(Some(n))))
}

pub(super) async fn status(state: &Arc<State>, p: &Principal) -> Reply {
    require(p, &[Role::Admin, Role::Reader], "see sync jobs")?;
    let st = state.clone();
    let p = p.clone();
    let jobs = blocking(move || {
        let held = crate::sync_jobs::Held::read(&st);
        let mut jobs = st.sync_jobs.status(&held);
        jobs.retain(|j| sees_job(&p, &j.names));
        Ok(jobs)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &SyncJobs { jobs }))
}
