//! Commands that change something: parked events taken again or skipped,
//! process instances resumed or cancelled, a backup of a running store.
//! They go through the running service's admin endpoints; without a
//! service they are refused with what to do, and nothing is touched.

use crate::CliError;
use crate::args::Target;
use crate::error::Action;
use crate::output::Out;
use eventfold_storage::{OpenError, RocksStore, StoreOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Longest wait for the service's answer (a backup of a large store takes
/// a while; a retry waits for the handler).
pub(crate) const SERVICE_TIMEOUT: Duration = Duration::from_secs(600);

/// The service's path segment for `text` (ids and names may hold any
/// character but `/` is the separator).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// POSTs `body` to the service's `path` with the admin token; its JSON
/// answer, or its error as [`CliError::Service`].
fn post(target: &Target, service: &str, path: &str, body: Value) -> Result<Value, CliError> {
    let client = reqwest::blocking::Client::builder()
        .timeout(SERVICE_TIMEOUT)
        .build()?;
    let url = format!("{}{path}", service.trim_end_matches('/'));
    let mut request = client.post(url).json(&body);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    let response = request.send()?;
    let status = response.status();
    let answer: Value = response.json().unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(answer);
    }
    let text = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Err(CliError::Service {
        status: status.as_u16(),
        code: text("code"),
        detail: text("message"),
    })
}

/// Without a service: whether the store is held decides the refusal. A
/// held store is "in use"; a free one has no runtime to run the handlers.
fn refuse(target: &Target, action: Action, what: &'static str) -> Result<Value, CliError> {
    let Some(path) = &target.store else {
        return Err(CliError::NoTarget(action));
    };
    // Opened only to learn whether another process holds it; a store this
    // opens is closed again at once, unchanged (it exists: CURRENT is there).
    if !path.join("CURRENT").is_file() {
        return Err(OpenError::Missing(path.clone()).into());
    }
    match RocksStore::open(path, StoreOptions::default()) {
        Err(OpenError::InUse(path)) => Err(CliError::InUse { path, action }),
        Err(other) => Err(other.into()),
        Ok(store) => {
            store.close();
            Err(CliError::NeedsRuntime { action, what })
        }
    }
}

/// `retry` or `skip` a parked event.
pub(crate) fn parked(
    out: &mut Out<'_>,
    action: Action,
    name: &str,
    position: u64,
    target: &Target,
) -> Result<(), CliError> {
    let answer = match &target.service {
        Some(service) => {
            let path = format!(
                "/admin/projections/{}/parked/{position}/{action}",
                segment(name)
            );
            post(target, service, &path, json!({}))?
        }
        None => refuse(target, action, "projection")?,
    };
    out.show(&answer, || {
        let mut table = crate::output::table(&["projection", "position", "done"]);
        table.add_row(vec![
            name.to_owned(),
            position.to_string(),
            action.to_string(),
        ]);
        table
    })
}

/// `resume` or `cancel` a process instance.
pub(crate) fn instance(
    out: &mut Out<'_>,
    action: Action,
    name: &str,
    id: &str,
    target: &Target,
) -> Result<(), CliError> {
    let answer = match &target.service {
        Some(service) => {
            let path = format!(
                "/admin/processes/{}/instances/{}/{action}",
                segment(name),
                segment(id)
            );
            post(target, service, &path, json!({}))?
        }
        None => refuse(target, action, "process manager")?,
    };
    out.show(&answer, || {
        let mut table = crate::output::table(&["process manager", "instance", "done"]);
        table.add_row(vec![name.to_owned(), id.to_owned(), action.to_string()]);
        table
    })
}

/// A backup through the service (into a directory on its machine), or
/// directly from a store no process holds.
pub(crate) fn backup(out: &mut Out<'_>, dest: &Path, target: &Target) -> Result<(), CliError> {
    let backup_id = match (&target.service, &target.store) {
        (Some(service), _) => {
            let answer = post(
                target,
                service,
                "/admin/backup",
                json!({"dir": dest.display().to_string()}),
            )?;
            answer.get("backup_id").and_then(Value::as_u64).unwrap_or(0)
        }
        (None, Some(path)) => {
            if !path.join("CURRENT").is_file() {
                return Err(OpenError::Missing(path.clone()).into());
            }
            let store = match RocksStore::open(path, StoreOptions::default()) {
                Err(OpenError::InUse(path)) => {
                    return Err(CliError::InUse {
                        path,
                        action: Action::Backup,
                    });
                }
                other => other?,
            };
            let bar = crate::progress::spinner("backing up");
            let id = store.backup(dest);
            bar.finish_and_clear();
            store.close();
            u64::from(id?)
        }
        (None, None) => return Err(CliError::NoTarget(Action::Backup)),
    };
    let answer = json!({"backup_id": backup_id, "dir": dest.display().to_string()});
    out.show(&answer, || {
        let mut table = crate::output::table(&["backup id", "directory"]);
        table.add_row(vec![backup_id.to_string(), dest.display().to_string()]);
        table
    })
}
