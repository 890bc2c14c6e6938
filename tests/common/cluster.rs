//! A Redis Cluster of our own for the tests and the benchmark: six `redis-server`s with
//! `--cluster-enabled yes` on free ports in a temporary directory, joined by
//! `redis-cli --cluster create` into three primaries with one replica each. Persistence
//! off; a node that loses its primary for a second fails over (`--cluster-node-timeout`).
//! Dropping it kills every node and removes the directory.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a primary may be unreachable before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// One line of `CLUSTER NODES`.
struct NodeView {
    id: String,
    port: u16,
    flags: String,
    /// The id of its primary, `-` for a primary.
    primary: String,
    slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// A primary that is not marked failed.
    fn serves(&self) -> bool {
        self.flags.contains("master") && !self.flags.contains("fail")
    }
}

struct Node {
    port: u16,
    child: Option<Child>,
    /// Stopped with SIGSTOP: it accepts connections and answers nothing.
    paused: bool,
}

/// Whether `program --version` runs.
fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `n` ports that were free a moment ago (each node needs two: clients and the cluster bus).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn connection(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_connection_with_timeout(Duration::from_secs(2))
}

impl RedisCluster {
    /// Starts the cluster and waits until every node sees it whole; `Err` says why it
    /// cannot run here (no `redis-server` on PATH), and the caller skips.
    pub fn start() -> Result<Self, String> {
        if !found("redis-server") {
            return Err("redis-server is not on PATH".into());
        }
        assert!(
            found("redis-cli"),
            "redis-cli is not on PATH although redis-server is (they come in one package)"
        );
        let dir = std::env::temp_dir().join(format!(
            "bt-cluster-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports = free_ports(12);
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        for i in 0..6 {
            let (port, bus) = (ports[2 * i], ports[2 * i + 1]);
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // A replica can only take over once it has synced; without this delay
                // the first sync starts at once instead of 5 s after it is asked for.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            cluster.nodes.push(Node {
                port,
                child: Some(child),
                paused: false,
            });
        }
        for node in &cluster.nodes {
            wait_for(Duration::from_secs(10), || {
                connection(node.port)
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            })
            .unwrap_or_else(|| panic!("redis-server on port {} did not come up", node.port));
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // `create` returns when the slots are assigned; wait until every node agrees that
        // the cluster is up and every replica has a primary.
        wait_for(Duration::from_secs(60), || {
            (0..6).all(|i| cluster.state_ok(i) && cluster.synced(i))
                && cluster.primaries().len() == 3
        })
        .expect("the cluster did not come up");
        Ok(cluster)
    }

    /// The nodes' addresses, as `RedisLedger::cluster` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// A connection to node `i`.
    pub fn node(&self, i: usize) -> redis::Connection {
        connection(self.nodes[i].port).unwrap()
    }

    /// Running and answering.
    fn alive(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && !self.nodes[i].paused
    }

    fn state_ok(&self, i: usize) -> bool {
        connection(self.nodes[i].port)
            .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
            .is_ok_and(|info| info.contains("cluster_state:ok"))
    }

    /// Whether node `i` is a primary, or a replica whose link to its primary is up (only
    /// a replica that synced can take over).
    fn synced(&self, i: usize) -> bool {
        connection(self.nodes[i].port)
            .and_then(|mut c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut c)
            })
            .is_ok_and(|info| {
                info.contains("role:master") || info.contains("master_link_status:up")
            })
    }

    /// The slot of `key`, as the cluster computes it.
    pub fn slot(&self, key: &str) -> u16 {
        let i = (0..6).find(|&i| self.alive(i)).unwrap();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(i))
            .unwrap()
    }

    /// `CLUSTER NODES` as node `i` sees it.
    fn view(&self, i: usize) -> Vec<NodeView> {
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node(i))
            .unwrap();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // 127.0.0.1:port@bus
                let port = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect();
                NodeView {
                    id: f[0].to_string(),
                    port,
                    flags: f[2].to_string(),
                    primary: f[3].to_string(),
                    slots,
                }
            })
            .collect()
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// The nodes that are primaries with slots, as a live node sees it.
    pub fn primaries(&self) -> Vec<usize> {
        let i = (0..6).find(|&i| self.alive(i)).unwrap();
        self.view(i)
            .into_iter()
            .filter(|n| n.serves() && !n.slots.is_empty())
            .map(|n| self.index_of(n.port))
            .collect()
    }

    /// The node that owns `slot`, as the live node `by` sees it.
    fn owner_seen_by(&self, by: usize, slot: u16) -> Option<usize> {
        self.view(by)
            .into_iter()
            .find(|n| n.serves() && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| self.index_of(n.port))
    }

    /// The primary that owns `slot`.
    pub fn owner(&self, slot: u16) -> usize {
        let by = (0..6).find(|&i| self.alive(i)).unwrap();
        self.owner_seen_by(by, slot).expect("an owner")
    }

    /// The replica of primary `p`.
    pub fn replica_of(&self, p: usize) -> usize {
        let view = self.view(p);
        let id = &view
            .iter()
            .find(|n| n.port == self.nodes[p].port)
            .unwrap()
            .id;
        view.iter()
            .find(|n| n.flags.contains("slave") && n.primary == *id)
            .map(|n| self.index_of(n.port))
            .expect("a replica")
    }

    /// Kills node `i` (SIGKILL): its clients see their connections reset.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops node `i` (SIGSTOP): its clients' calls go unanswered, as with a node that
    /// hangs or a network that drops its packets.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.nodes[i].paused = true;
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "-CONT");
        self.nodes[i].paused = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits until every live node sees `slot` owned by a node other than `old` and the
    /// cluster is up again; returns the new owner.
    pub fn wait_for_failover(&self, slot: u16, old: usize, bound: Duration) -> usize {
        let live: Vec<usize> = (0..6).filter(|&i| self.alive(i)).collect();
        wait_for(bound, || -> Option<usize> {
            let owners: Vec<Option<usize>> =
                live.iter().map(|&i| self.owner_seen_by(i, slot)).collect();
            let new = owners[0].filter(|&o| o != old)?;
            (owners.iter().all(|&o| o == Some(new)) && live.iter().all(|&i| self.state_ok(i)))
                .then_some(new)
        })
        .unwrap_or_else(|| panic!("no replica took over slot {slot} within {bound:?}"))
    }

    /// Script calls node `i` has answered so far (EVALSHA, EVAL, SCRIPT).
    pub fn script_calls(&self, i: usize) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.node(i))
            .unwrap();
        info.lines()
            .filter(|l| {
                l.starts_with("cmdstat_evalsha:")
                    || l.starts_with("cmdstat_eval:")
                    || l.starts_with("cmdstat_script")
            })
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl RedisCluster {
    /// `EVAL` calls node `i` has answered: scripts sent whole because the node did not
    /// know them.
    pub fn eval_calls(&self, i: usize) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.node(i))
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

/// Polls `f` every 50 ms until it answers `Some`/`true`, for at most `bound`.
fn wait_for<T>(bound: Duration, mut f: impl FnMut() -> T) -> Option<T::Output>
where
    T: Answer,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().answer() {
            return Some(v);
        }
        if start.elapsed() > bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

trait Answer {
    type Output;
    fn answer(self) -> Option<Self::Output>;
}

impl Answer for bool {
    type Output = ();
    fn answer(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Answer for Option<T> {
    type Output = T;
    fn answer(self) -> Option<T> {
        self
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
