//! The services a cluster runs on, started on this machine's loopback:
//! JetStream servers (`nats-server`) and etcd members, each a child process
//! with its own directory and ports, found by stored PID for the faults a
//! test injects (kill -9, SIGSTOP, SIGCONT).
//!
//! The binaries come from `PATH`, or from `EVENTFOLD_NATS_SERVER` and
//! `EVENTFOLD_ETCD`; `scripts/cluster-deps.sh` installs them when missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a started service may take to answer before the start fails.
pub const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times [`LocalServices::start`] starts the services, each time on
/// fresh ports, when one of them exits or does not answer (a port taken by
/// another process between its choice and its use).
pub const START_ATTEMPTS: usize = 3;

/// The lowest port handed to a service: below it are the well-known and
/// registered ports of other software.
const FIRST_PORT: u16 = 10_000;

/// How many ports [`free_port`] tries before it asks the kernel for one.
const PORT_PROBES: u32 = 2_000;

/// The fewest ports between [`FIRST_PORT`] and the ephemeral range for
/// [`free_port`] to choose among them; with fewer, the kernel chooses.
const PORT_ROOM_MIN: u16 = 1_000;

/// Why the local services could not be started or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A binary is not installed.
    #[error("{binary} is not installed (run scripts/cluster-deps.sh, or set {variable})")]
    Missing {
        /// The binary.
        binary: &'static str,
        /// The variable that names it instead of `PATH`.
        variable: &'static str,
    },
    /// Starting or signalling a process, or preparing its directory, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A service did not answer within [`SERVICE_READY_TIMEOUT`].
    #[error("{0} did not become ready in time")]
    NotReady(String),
    /// A service exited before it answered.
    #[error("{name} exited before it answered ({status}); its log: {}", log.display())]
    Exited {
        /// The member.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// No such member.
    #[error("no service named {0}")]
    Unknown(String),
}

/// What kind of service a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A JetStream server.
    Nats,
    /// An etcd member.
    Etcd,
}

/// One member of a local service cluster.
#[derive(Debug)]
pub struct Member {
    /// Its name (`n1`, `e2`, …): the server name a JetStream leader is
    /// reported by, the etcd member name.
    pub name: String,
    /// Which service.
    pub kind: Kind,
    /// The port clients connect to.
    pub client_port: u16,
    /// The port its peers connect to.
    pub peer_port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    /// The PID of its running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The URL clients use.
    pub fn client_url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.client_port),
            Kind::Etcd => format!("http://127.0.0.1:{}", self.client_port),
        }
    }

    /// Its log file (standard output and error).
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn spawn(&mut self) -> Result<(), LaunchError> {
        let binary = binary(self.kind)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|source| io(format!("open the log of {}", self.name), source))?;
        let errors = log
            .try_clone()
            .map_err(|source| io(format!("open the log of {}", self.name), source))?;
        let child = Command::new(binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .map_err(|source| io(format!("start {}", self.name), source))?;
        self.child = Some(child);
        Ok(())
    }
}

fn io(what: String, source: std::io::Error) -> LaunchError {
    LaunchError::Io { what, source }
}

/// The binary of a kind of service: its variable, else `PATH`.
fn binary(kind: Kind) -> Result<PathBuf, LaunchError> {
    let (binary, variable) = match kind {
        Kind::Nats => ("nats-server", "EVENTFOLD_NATS_SERVER"),
        Kind::Etcd => ("etcd", "EVENTFOLD_ETCD"),
    };
    if let Some(path) = std::env::var_os(variable) {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    });
    found.ok_or(LaunchError::Missing { binary, variable })
}

/// Whether both services' binaries are installed.
pub fn installed() -> Result<(), LaunchError> {
    binary(Kind::Nats)?;
    binary(Kind::Etcd)?;
    Ok(())
}

/// A port free on loopback now. Another process may still take it before
/// it is used, which a start then finds and retries ([`START_ATTEMPTS`]).
///
/// It is chosen below the kernel's range of ephemeral ports when there is
/// room there: the outgoing connections of every process on the machine
/// (the services' own among them) take their ports from that range, so a
/// port below it is taken only by a process that asks for it by number.
/// Each process starts at its own place in that room, and each call moves
/// on, so tests running side by side do not pick the same ports.
fn free_port() -> Result<u16, LaunchError> {
    let low = ephemeral_range_start();
    if let Some(span) = low
        .checked_sub(FIRST_PORT)
        .filter(|span| *span >= PORT_ROOM_MIN)
    {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id().wrapping_mul(7_919);
        for _ in 0..PORT_PROBES {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let offset = start.wrapping_add(step) % u32::from(span);
            let Ok(offset) = u16::try_from(offset) else {
                continue;
            };
            let port = FIRST_PORT + offset;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|source| io("find a free port".into(), source))?;
    let port = listener
        .local_addr()
        .map_err(|source| io("find a free port".into(), source))?
        .port();
    Ok(port)
}

/// The name of the `index`th member of a kind (from 0): `n1`, `e2`, …
fn member_name(kind: Kind, index: usize) -> String {
    let prefix = match kind {
        Kind::Nats => 'n',
        Kind::Etcd => 'e',
    };
    format!("{prefix}{}", index + 1)
}

/// The names of `nats` JetStream servers' and `etcd` etcd members.
fn member_names(nats: usize, etcd: usize) -> impl Iterator<Item = String> {
    (0..nats)
        .map(|index| member_name(Kind::Nats, index))
        .chain((0..etcd).map(|index| member_name(Kind::Etcd, index)))
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_range_start() -> u16 {
    static START: OnceLock<u16> = OnceLock::new();
    *START.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768)
    })
}

/// JetStream servers and etcd members on loopback, stopped when dropped.
#[derive(Debug)]
pub struct LocalServices {
    members: Vec<Member>,
}

impl LocalServices {
    /// Starts `nats` JetStream servers (one cluster) and `etcd` etcd
    /// members under `dir`, and waits until each accepts connections.
    ///
    /// When a service exits or does not answer, every service of the try is
    /// stopped and the start begins again on fresh ports and empty member
    /// directories (the failed try's are removed), up to [`START_ATTEMPTS`]
    /// times; the last try's error is returned.
    pub fn start(dir: &Path, nats: usize, etcd: usize) -> Result<Self, LaunchError> {
        installed()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, nats, etcd) {
                Err(error @ (LaunchError::NotReady(_) | LaunchError::Exited { .. }))
                    if attempt < START_ATTEMPTS =>
                {
                    tracing::warn!(%error, attempt, "local services did not start; again on fresh ports");
                    // The failed try's data: etcd refuses to form a new
                    // cluster in a directory that holds another's.
                    for name in member_names(nats, etcd) {
                        let member_dir = dir.join(name);
                        if member_dir.exists() {
                            std::fs::remove_dir_all(&member_dir).map_err(|source| {
                                io(format!("empty {}", member_dir.display()), source)
                            })?;
                        }
                    }
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(dir: &Path, nats: usize, etcd: usize) -> Result<Self, LaunchError> {
        let mut members = Vec::new();
        let nats_ports = (0..nats)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>, LaunchError>>()?;
        for (index, (client, peer)) in nats_ports.iter().enumerate() {
            let name = member_name(Kind::Nats, index);
            let member_dir = dir.join(&name);
            std::fs::create_dir_all(&member_dir)
                .map_err(|source| io(format!("create {}", member_dir.display()), source))?;
            let routes: Vec<String> = nats_ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, (_, peer))| format!("nats-route://127.0.0.1:{peer}"))
                .collect();
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                 jetstream {{ store_dir: \"{}\", max_memory_store: 256MB, max_file_store: 4GB }}\n\
                 {}",
                member_dir.join("js").display(),
                if nats > 1 {
                    format!(
                        "cluster {{ name: eventfold, listen: 127.0.0.1:{peer}, routes: [{}] }}\n",
                        routes.join(", ")
                    )
                } else {
                    String::new()
                }
            );
            let config_path = member_dir.join("nats.conf");
            std::fs::write(&config_path, config)
                .map_err(|source| io(format!("write {}", config_path.display()), source))?;
            members.push(Member {
                name,
                kind: Kind::Nats,
                client_port: *client,
                peer_port: *peer,
                dir: member_dir,
                args: vec!["-c".into(), config_path.display().to_string()],
                child: None,
            });
        }
        let etcd_ports = (0..etcd)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>, LaunchError>>()?;
        let initial: Vec<String> = etcd_ports
            .iter()
            .enumerate()
            .map(|(index, (_, peer))| {
                format!("{}=http://127.0.0.1:{peer}", member_name(Kind::Etcd, index))
            })
            .collect();
        for (index, (client, peer)) in etcd_ports.iter().enumerate() {
            let name = member_name(Kind::Etcd, index);
            let member_dir = dir.join(&name);
            std::fs::create_dir_all(&member_dir)
                .map_err(|source| io(format!("create {}", member_dir.display()), source))?;
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", member_dir.join("data").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=eventfold".into(),
                "--heartbeat-interval=100".into(),
                "--election-timeout=1000".into(),
                "--logger=zap".into(),
            ];
            members.push(Member {
                name,
                kind: Kind::Etcd,
                client_port: *client,
                peer_port: *peer,
                dir: member_dir,
                args,
                child: None,
            });
        }
        let mut services = Self { members };
        for member in &mut services.members {
            member.spawn()?;
        }
        for member in &mut services.members {
            wait_listening(member)?;
        }
        Ok(services)
    }

    /// Every member.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The client URLs of the JetStream servers.
    pub fn nats_urls(&self) -> Vec<String> {
        self.urls(Kind::Nats)
    }

    /// The client URLs of the etcd members.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.urls(Kind::Etcd)
    }

    fn urls(&self, kind: Kind) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.kind == kind)
            .map(Member::client_url)
            .collect()
    }

    fn member_mut(&mut self, name: &str) -> Result<&mut Member, LaunchError> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| LaunchError::Unknown(name.into()))
    }

    /// Sends `signal` to the member named `name` by its stored PID.
    pub fn signal(&mut self, name: &str, signal: i32) -> Result<(), LaunchError> {
        let member = self.member_mut(name)?;
        let pid = member
            .pid()
            .ok_or_else(|| LaunchError::Unknown(format!("{name} (not running)")))?;
        signal_pid(pid, signal)
    }

    /// kill -9 of the member named `name`; waits for the process to end.
    pub fn kill(&mut self, name: &str) -> Result<(), LaunchError> {
        let member = self.member_mut(name)?;
        if let Some(mut child) = member.child.take() {
            signal_pid(child.id(), libc::SIGKILL)?;
            child
                .wait()
                .map_err(|source| io(format!("wait for {name}"), source))?;
        }
        Ok(())
    }

    /// Starts the member named `name` again, on its ports and its directory.
    pub fn restart(&mut self, name: &str) -> Result<(), LaunchError> {
        let member = self.member_mut(name)?;
        if member.kind == Kind::Etcd {
            // A member that rejoins is no longer in the initial cluster.
            for arg in &mut member.args {
                if arg == "--initial-cluster-state=new" {
                    *arg = "--initial-cluster-state=existing".into();
                }
            }
        }
        member.spawn()?;
        wait_listening(member)
    }
}

impl Drop for LocalServices {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                // A stopped process must be continued to die of SIGKILL's
                // wait; SIGKILL itself ends it either way.
                let _ = signal_pid(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// Sends a signal to a process.
pub fn signal_pid(pid: u32, signal: i32) -> Result<(), LaunchError> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| LaunchError::Unknown(format!("process {pid}")))?;
    // SAFETY: kill(2) takes any pid and signal number and reports misuse
    // through its return value; no memory is shared.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(io(
            format!("signal {signal} to process {pid}"),
            std::io::Error::last_os_error(),
        ))
    }
}

/// Waits until the member accepts TCP connections on its client port, and
/// reports at once a member that exited instead.
fn wait_listening(member: &mut Member) -> Result<(), LaunchError> {
    let started = Instant::now();
    while started.elapsed() < SERVICE_READY_TIMEOUT {
        if std::net::TcpStream::connect(("127.0.0.1", member.client_port)).is_ok() {
            return Ok(());
        }
        if let Some(child) = member.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            member.child = None;
            return Err(LaunchError::Exited {
                name: member.name.clone(),
                status,
                log: member.log(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(LaunchError::NotReady(member.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_chosen_below_the_ephemeral_range_and_not_twice() -> Result<(), LaunchError> {
        let low = ephemeral_range_start();
        let ports = (0..64)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if low >= FIRST_PORT + PORT_ROOM_MIN {
            assert!(
                ports.iter().all(|p| (FIRST_PORT..low).contains(p)),
                "{ports:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_service_that_exits_is_reported_at_once_with_its_log()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut member = Member {
            name: "n1".into(),
            kind: Kind::Nats,
            client_port: free_port()?,
            peer_port: free_port()?,
            dir: dir.path().to_path_buf(),
            // A configuration file that does not exist: the server exits.
            args: vec![
                "-c".into(),
                dir.path().join("missing.conf").display().to_string(),
            ],
            child: None,
        };
        member.spawn()?;
        let started = Instant::now();
        match wait_listening(&mut member) {
            Err(LaunchError::Exited { name, status, log }) => {
                assert_eq!(name, "n1");
                assert!(!status.success());
                assert!(log.is_file());
            }
            other => panic!("expected Exited, got {other:?}"),
        }
        assert!(started.elapsed() < SERVICE_READY_TIMEOUT / 2);
        assert!(member.pid().is_none());
        Ok(())
    }

    #[test]
    fn the_members_dirs_are_the_ones_a_failed_try_removes() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let services = LocalServices::start(dir.path(), 2, 1)?;
        let mut made: Vec<String> = services.members().iter().map(|m| m.name.clone()).collect();
        made.sort();
        let mut named: Vec<String> = member_names(2, 1).collect();
        named.sort();
        assert_eq!(made, named);
        assert_eq!(made, ["e1", "n1", "n2"]);
        for member in services.members() {
            assert_eq!(member.dir, dir.path().join(&member.name));
            assert!(member.dir.is_dir());
        }
        Ok(())
    }
}
