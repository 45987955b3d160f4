//! The harness's eventfold nodes: `cluster-node` processes (the bank), one
//! directory each, found by stored PID; and where each fault lands (the
//! owner of a partition, the JetStream stream's leader, etcd's leader).

use eventfold_cluster::local::{LocalServices, signal_pid};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One node process.
pub struct Node {
    pub name: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// The node processes.
pub struct Nodes {
    pub nodes: Vec<Node>,
    binary: PathBuf,
    args: Vec<String>,
}

impl Nodes {
    /// Starts `count` nodes of `services`' cluster under `dir`.
    pub fn start(
        services: &LocalServices,
        dir: &Path,
        count: usize,
        common: &[String],
    ) -> Result<Self, String> {
        // cluster-node is built beside this binary (same package build).
        let binary = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("cluster-node");
        if !binary.is_file() {
            return Err(format!(
                "{} is missing: cargo build --release -p eventfold-examples --bin cluster-node",
                binary.display()
            ));
        }
        let mut args = vec![
            "--nats".into(),
            services.nats_urls().join(","),
            "--etcd".into(),
            services.etcd_endpoints().join(","),
        ];
        args.extend_from_slice(common);
        let mut nodes = Self {
            nodes: (0..count)
                .map(|i| Node {
                    name: format!("node-{}", i + 1),
                    dir: dir.join(format!("node-{}", i + 1)),
                    child: None,
                })
                .collect(),
            binary,
            args,
        };
        for index in 0..count {
            nodes.spawn(index)?;
        }
        Ok(nodes)
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let node = &mut self.nodes[index];
        std::fs::create_dir_all(&node.dir).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.with_extension("log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&node.name)
            .arg("--dir")
            .arg(node.dir.join("replica"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", node.name))?;
        node.child = Some(child);
        Ok(())
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("no node {name}"))
    }

    /// The PID of node `name`.
    pub fn pid(&self, name: &str) -> Result<u32, String> {
        let index = self.index(name)?;
        self.nodes[index]
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| format!("{name} is not running"))
    }

    /// The PIDs of the running nodes, by name.
    pub fn pids(&self) -> HashMap<String, u32> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.child.as_ref()?.id())))
            .collect()
    }

    /// kill -9 of node `name`.
    pub fn kill(&mut self, name: &str) -> Result<(), String> {
        let index = self.index(name)?;
        if let Some(mut child) = self.nodes[index].child.take() {
            signal_pid(child.id(), libc::SIGKILL).map_err(|e| e.to_string())?;
            child.wait().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts node `name` again on its directory.
    pub fn restart(&mut self, name: &str) -> Result<(), String> {
        let index = self.index(name)?;
        self.spawn(index)
    }

    /// SIGTERM to every node (a graceful leave), then waits for each.
    pub fn stop_all(&mut self) -> Result<Vec<(String, PathBuf)>, String> {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                signal_pid(child.id(), libc::SIGTERM).map_err(|e| e.to_string())?;
            }
        }
        let mut replicas = Vec::new();
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let status = child.wait().map_err(|e| e.to_string())?;
                if !status.success() {
                    return Err(format!("{} exited with {status}", node.name));
                }
            }
            replicas.push((node.name.clone(), node.dir.join("replica")));
        }
        Ok(replicas)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = signal_pid(child.id(), libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// CPU time (user and system) a process used so far, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields follow its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some((utime + stime) * 1_000_000 / ticks)
}

/// The name of etcd's leader among `services`' members.
pub async fn etcd_leader(services: &LocalServices) -> Result<String, String> {
    for member in services
        .members()
        .iter()
        .filter(|m| m.kind == eventfold_cluster::local::Kind::Etcd)
    {
        let Ok(mut client) = etcd_client::Client::connect([member.client_url()], None).await else {
            continue;
        };
        let Ok(status) = client.status().await else {
            continue;
        };
        let me = status.header().map(|h| h.member_id());
        if me == Some(status.leader()) {
            return Ok(member.name.clone());
        }
    }
    Err("no etcd member says it leads".into())
}

/// The name of the JetStream server leading the log's stream.
pub async fn stream_leader(log: &eventfold_cluster::log::Log) -> Result<String, String> {
    let mut stream = log
        .jetstream()
        .get_stream(&log.config().stream)
        .await
        .map_err(|e| e.to_string())?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .ok_or_else(|| "the stream has no leader".into())
}
