//! The cluster's event log on NATS JetStream: one stream, replicated,
//! holding every event (a subject per aggregate) and every partition's
//! claim markers. Appends are requests that JetStream answers once a
//! quorum of its servers stored them; each event carries the check that
//! makes a stale owner's append fail (see [`crate::wire`]).

use crate::wire::{EventHeaders, HEADER_APPEND, HEADER_NODE, HEADER_TOKEN, Subjects, encode_event};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use eventfold_runtime::domain::{CommandId, NewEvent, StreamId};
use std::time::Duration;

/// Attempts to send a write (an append, a single-runner's commit) whose
/// answer did not come, with the same message ids.
pub const PUBLISH_ATTEMPTS_MAX: usize = 5;
/// The pause before sending an unanswered write again.
pub const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a write that landed waits for the replica to apply it.
pub const REPLICA_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a write that no server takes (the stream is electing a
/// leader) is sent again before it is refused; nothing was written, so
/// the claim it was sent under stays.
pub const LEADERLESS_WAIT_MAX: Duration = Duration::from_secs(20);

/// What a writer does after an attempt failed with an error that is
/// neither a refusal of its check nor a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Send it again (after the pause): no server took it and the log is
    /// still electing, or its answer was lost and attempts remain.
    SendAgain,
    /// No server took it for [`LEADERLESS_WAIT_MAX`].
    Leaderless,
    /// Its answer was lost [`PUBLISH_ATTEMPTS_MAX`] times: it may have
    /// landed.
    NoAnswer,
    /// The log refused it.
    Refused,
}

/// The attempts of one write (an append, a single-runner's commit), for
/// the decision after each failure both writers share.
#[derive(Debug)]
pub struct WriteAttempts {
    /// Attempts whose outcome is unknown.
    unanswered: usize,
    started: tokio::time::Instant,
}

impl WriteAttempts {
    /// The attempts of a write about to be sent the first time.
    pub fn new() -> Self {
        Self {
            unanswered: 0,
            started: tokio::time::Instant::now(),
        }
    }

    /// What to do after `error`; pauses first when the answer is to send
    /// again.
    pub async fn after(&mut self, error: &LogError) -> AfterFailure {
        let next = if error.not_taken() {
            if self.started.elapsed() < LEADERLESS_WAIT_MAX {
                AfterFailure::SendAgain
            } else {
                AfterFailure::Leaderless
            }
        } else if error.outcome_unknown() {
            if self.unanswered + 1 < PUBLISH_ATTEMPTS_MAX {
                self.unanswered += 1;
                tracing::debug!(attempt = self.unanswered, %error, "write unanswered; sending again");
                AfterFailure::SendAgain
            } else {
                AfterFailure::NoAnswer
            }
        } else {
            AfterFailure::Refused
        };
        if next == AfterFailure::SendAgain {
            tokio::time::sleep(PUBLISH_RETRY_PAUSE).await;
        }
        next
    }

    /// Whether an earlier attempt may have landed (its answer was lost).
    pub fn may_have_landed(&self) -> bool {
        self.unanswered > 0
    }
}

impl Default for WriteAttempts {
    fn default() -> Self {
        Self::new()
    }
}

/// JetStream's error code for a failed expected-sequence check.
pub const WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream's error code for an atomic batch holding a message id it has
/// seen within its window: the batch was sent before and landed.
pub const BATCH_DUPLICATE_MESSAGE_ID: u64 = 10201;

/// How the log is laid out and reached.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The JetStream stream's name.
    pub stream: String,
    /// The subjects' prefix.
    pub prefix: String,
    /// Copies JetStream keeps of each message (1, 3 or 5).
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop duplicates; past
    /// it, the replicas' record of applied command ids answers retries.
    pub duplicate_window: Duration,
    /// How long a request to JetStream (an append, a marker) may wait for
    /// its answer before it counts as unanswered.
    pub request_timeout: Duration,
    /// How long a node waits at start for the JetStream cluster to take
    /// requests (a cluster that is starting elects its leaders first).
    pub ready_timeout: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            stream: "EVENTFOLD".into(),
            prefix: "ef".into(),
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the log refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A server address is not a NATS URL.
    #[error("{0} is not a NATS server address: {1}")]
    Address(String, String),
    /// No JetStream server could be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The stream could not be created or read.
    #[error("the log's stream: {0}")]
    Stream(#[from] jetstream::context::CreateStreamError),
    /// The stream exists with another layout.
    #[error("the log's stream {stream} exists with {field} = {found}, not {wanted}")]
    Layout {
        /// The stream.
        stream: String,
        /// The setting that differs.
        field: &'static str,
        /// What it is.
        found: String,
        /// What this node needs.
        wanted: String,
    },
    /// The stream could not be found.
    #[error("the log's stream: {0}")]
    GetStream(#[from] jetstream::context::GetStreamError),
    /// The stream's state could not be read.
    #[error("the log's state: {0}")]
    Info(#[from] jetstream::stream::InfoError),
    /// A stored message could not be read.
    #[error("reading the log: {0}")]
    Read(#[from] jetstream::stream::LastRawMessageError),
    /// The request was not answered (a lost connection, a leader
    /// election, a timeout): it may or may not have been applied.
    #[error("no answer from the log: {0}")]
    NoAnswer(#[from] async_nats::RequestError),
    /// A message could not be sent.
    #[error("sending to the log: {0}")]
    Send(#[from] async_nats::PublishError),
    /// The expected-sequence check failed: for an event, its claim was
    /// fenced by a newer one; for a marker, another marker came first.
    #[error("the log refused the write: {description}")]
    WrongLastSequence {
        /// JetStream's words.
        description: String,
    },
    /// An atomic batch was sent before and landed (JetStream knows its
    /// message ids); unlike a single message, it does not say where.
    #[error("the append landed before: {description}")]
    AlreadyLanded {
        /// JetStream's words.
        description: String,
    },
    /// JetStream refused the request otherwise.
    #[error("the log refused the write ({code}/{err_code}): {description}")]
    Refused {
        /// The status code.
        code: u16,
        /// JetStream's error code.
        err_code: u64,
        /// JetStream's words.
        description: String,
    },
    /// The answer was not an acknowledgement.
    #[error("an unreadable answer from the log: {0}")]
    BadAnswer(#[from] serde_json::Error),
}

impl LogError {
    /// Whether the request may have been applied all the same (so that a
    /// retry must carry the same message ids).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, LogError::NoAnswer(_) | LogError::Send(_)) && !self.not_taken()
    }

    /// Whether no server took the request (no responders: the stream has
    /// no leader now, during an election): nothing was written, and it
    /// may be sent again once a leader is elected.
    pub fn not_taken(&self) -> bool {
        matches!(self, LogError::NoAnswer(error)
            if error.kind() == async_nats::RequestErrorKind::NoResponders)
    }
}

/// JetStream's answer to a publish.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landed {
    /// The sequence (position) of its last event.
    pub last_sequence: u64,
    /// JetStream had it already (a retry within its window): the sequence
    /// is the original's.
    pub duplicate: bool,
}

/// A claim as the log knows it: the marker that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The marker's sequence.
    pub sequence: u64,
    /// The claim's token (etcd's create revision of the claim).
    pub token: u64,
}

/// A connection to the log.
#[derive(Clone)]
pub struct Log {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    config: LogConfig,
}

impl Log {
    /// Connects to the JetStream servers at `urls` and makes sure the
    /// stream exists with this layout.
    pub async fn connect(urls: &[String], config: LogConfig) -> Result<Self, LogError> {
        let mut servers = Vec::with_capacity(urls.len());
        for url in urls {
            servers.push(
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| LogError::Address(url.clone(), e.to_string()))?,
            );
        }
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(config.request_timeout))
            .connect(servers)
            .await?;
        let jetstream = jetstream::new(client.clone());
        let log = Self {
            client,
            jetstream,
            subjects: Subjects::new(&config.prefix),
            config,
        };
        // A JetStream cluster that is starting answers only once it has
        // elected its meta leader: the stream is asked for again until then.
        let started = tokio::time::Instant::now();
        loop {
            match log.ensure_stream().await {
                Ok(()) => return Ok(log),
                Err(error @ LogError::Layout { .. }) => return Err(error),
                Err(error) if started.elapsed() >= log.config.ready_timeout => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "the log is not ready yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// The subjects of this log.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The NATS connection (for the command routes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The layout.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    async fn ensure_stream(&self) -> Result<(), LogError> {
        let wanted = stream::Config {
            name: self.config.stream.clone(),
            subjects: self.subjects.all(),
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window,
            allow_atomic_publish: true,
            allow_direct: true,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = self.jetstream.get_or_create_stream(wanted.clone()).await?;
        let config = &stream.info().await?.config;
        let differs = |field, found: String, wanted: String| LogError::Layout {
            stream: self.config.stream.clone(),
            field,
            found,
            wanted,
        };
        if config.subjects != wanted.subjects {
            return Err(differs(
                "subjects",
                config.subjects.join(","),
                wanted.subjects.join(","),
            ));
        }
        if config.num_replicas != wanted.num_replicas {
            return Err(differs(
                "replicas",
                config.num_replicas.to_string(),
                wanted.num_replicas.to_string(),
            ));
        }
        if !config.allow_atomic_publish {
            return Err(differs("allow_atomic", "false".into(), "true".into()));
        }
        Ok(())
    }

    /// The sequence of the log's last message (0: empty).
    pub async fn last_sequence(&self) -> Result<u64, LogError> {
        let mut stream = self.jetstream.get_stream(&self.config.stream).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// The last claim marker of `partition`, if it had one.
    pub async fn last_fence(&self, partition: u32) -> Result<Option<Fence>, LogError> {
        let stream = self.jetstream.get_stream(&self.config.stream).await?;
        match stream
            .get_last_raw_message_by_subject(&self.subjects.fence(partition))
            .await
        {
            Ok(message) => {
                let token = message
                    .headers
                    .get(HEADER_TOKEN)
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                Ok(Some(Fence {
                    sequence: message.sequence,
                    token,
                }))
            }
            Err(error)
                if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Writes the marker of a claim on `partition` with `token`, accepted
    /// only if the partition's last marker is still `after` (its sequence;
    /// 0 for none): a claimer that was overtaken cannot fence the newer
    /// claim. Retried with the same arguments, a marker is written once.
    pub async fn write_fence(
        &self,
        partition: u32,
        token: u64,
        node: &str,
        after: u64,
    ) -> Result<Fence, LogError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            // Unique to this claim and the marker it follows: a claim
            // taken up again (the same token) writes a new marker, not a
            // duplicate of its first.
            format!("claim.{partition}.{token}.{after}").as_str(),
        );
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            after.to_string().as_str(),
        );
        headers.insert(HEADER_TOKEN, token.to_string().as_str());
        headers.insert(HEADER_NODE, node);
        let answer = self
            .client
            .request_with_headers(self.subjects.fence(partition), headers, bytes::Bytes::new())
            .await?;
        let landed = read_answer(&answer.payload)?;
        Ok(Fence {
            sequence: landed.last_sequence,
            token,
        })
    }

    /// Appends `events` to `stream` (in `partition`) at versions
    /// `first_version..`, under the claim `fence`: one message, or an
    /// atomic batch for several events.
    pub async fn append(
        &self,
        partition: u32,
        fence: Fence,
        stream: &StreamId,
        first_version: u64,
        events: &[NewEvent],
        command: Option<CommandId>,
    ) -> Result<Landed, LogError> {
        let subject = self.subjects.events(partition, stream);
        let fence_subject = self.subjects.fence(partition);
        let headers = EventHeaders {
            fence_subject: &fence_subject,
            fence_sequence: fence.sequence,
            token: fence.token,
            command,
        };
        let count = events.len();
        let messages = events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                (
                    headers.build(event, index, count),
                    encode_event(stream, event, first_version + index as u64),
                )
            })
            .collect();
        let batch = events
            .first()
            .map(|e| format!("{}", e.metadata.event_id))
            .unwrap_or_default();
        self.publish(subject, &batch, messages).await
    }

    /// Writes read-model changes of the single-runner fenced on `fence`
    /// (its claim's marker `claim`): `chunks` from
    /// [`encode_read_model`](crate::wire::encode_read_model), one message
    /// or an atomic batch; `commit` makes the message ids (the same for a
    /// retry of the same commit).
    pub async fn write_read_model(
        &self,
        fence: u32,
        claim: Fence,
        chunks: Vec<bytes::Bytes>,
        commit: &str,
    ) -> Result<Landed, LogError> {
        let fence_subject = self.subjects.fence(fence);
        let count = chunks.len();
        let messages = chunks
            .into_iter()
            .enumerate()
            .map(|(index, payload)| {
                let mut headers = HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{commit}.{index}").as_str(),
                );
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    claim.sequence.to_string().as_str(),
                );
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    fence_subject.as_str(),
                );
                headers.insert(HEADER_TOKEN, claim.token.to_string().as_str());
                headers.insert(HEADER_APPEND, format!("{index}/{count}").as_str());
                (headers, payload)
            })
            .collect();
        self.publish(self.subjects.read_model(fence), commit, messages)
            .await
    }

    /// Publishes `messages` to `subject`: one, or an atomic batch `batch`
    /// of several; the answer to the last.
    async fn publish(
        &self,
        subject: String,
        batch: &str,
        messages: Vec<(HeaderMap, bytes::Bytes)>,
    ) -> Result<Landed, LogError> {
        let count = messages.len();
        let mut last = None;
        for (index, (mut headers, payload)) in messages.into_iter().enumerate() {
            if count == 1 {
                last = Some((headers, payload));
                break;
            }
            headers.insert(async_nats::header::NATS_BATCH_ID, batch);
            headers.insert(
                async_nats::header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 == count {
                headers.insert(
                    async_nats::header::NATS_BATCH_COMMIT,
                    async_nats::header::NATS_BATCH_COMMIT_FINAL,
                );
                last = Some((headers, payload));
            } else {
                self.client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await?;
            }
        }
        let Some((headers, payload)) = last else {
            return Err(LogError::Refused {
                code: 400,
                err_code: 0,
                description: "a publish without messages".into(),
            });
        };
        let answer = self
            .client
            .request_with_headers(subject, headers, payload)
            .await?;
        read_answer(&answer.payload)
    }
}

/// Reads JetStream's answer to a publish.
fn read_answer(payload: &[u8]) -> Result<Landed, LogError> {
    let answer: Answer = serde_json::from_slice(payload)?;
    if let Some(error) = answer.error {
        if error.err_code == WRONG_LAST_SEQUENCE {
            return Err(LogError::WrongLastSequence {
                description: error.description,
            });
        }
        if error.err_code == BATCH_DUPLICATE_MESSAGE_ID {
            return Err(LogError::AlreadyLanded {
                description: error.description,
            });
        }
        return Err(LogError::Refused {
            code: error.code,
            err_code: error.err_code,
            description: error.description,
        });
    }
    Ok(Landed {
        last_sequence: answer.seq,
        duplicate: answer.duplicate,
    })
}
