//! Key-value operations of a replica: limits, routing and the translation between the public
//! request shapes and the replicated command.
//!
//! Every write becomes one conditional batch. The leader stamps it with cluster time
//! (`cluster_time`) and turns relative TTLs into absolute deadlines against that stamp, so a write
//! forwarded by a follower is stamped only where it is proposed.

use bytes::Bytes;
use kvs_client::proto;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;

use crate::deadline::Deadline;
use crate::error::Error;
use crate::error::Refusal;
use crate::error::Result;
use crate::replica::Leadership;
use crate::replica::Replica;
use crate::replica::read::await_linearizable;
use crate::store::command::Batch;
use crate::store::command::BatchOutcome;
use crate::store::command::COMMAND_FORMAT;
use crate::store::command::Command;
use crate::store::command::Compare;
use crate::store::command::Op;
use crate::store::command::OpResult;
use crate::store::command::Outcome;
use crate::store::command::PutExpiry;
use crate::store::command::SessionStamp;
use crate::store::command::WriteId;
use crate::store::data::StateData;
use crate::store::entry::MemberAddr;
use crate::store::sessions::Dedup;

/// The faces check relative expiries against the wall clock as Redis does.
pub(crate) use crate::raft::clock::wall_clock_ms;

impl Replica {
    /// Reads one key, linearizably unless `serializable`.
    pub(crate) async fn get(&self, req: proto::GetRequest) -> Result<proto::GetResponse> {
        self.check_key(&req.key)?;
        self.read(req.serializable, |data, index, now| {
            match data.get(&req.key, now) {
                Some((value, expires_at_ms)) => proto::GetResponse {
                    found: true,
                    value,
                    expires_at_ms,
                    index,
                },
                None => proto::GetResponse {
                    index,
                    ..Default::default()
                },
            }
        })
        .await
    }

    /// Runs `f` on the state as of now — linearizably unless `serializable` — with the applied
    /// log index and the cluster time to judge expiry by (`cluster_time`): never below the time
    /// of the last entry applied. Every read of every face goes here.
    pub(crate) async fn read<T>(
        &self,
        serializable: bool,
        f: impl FnOnce(&StateData, u64, u64) -> T,
    ) -> Result<T> {
        let (_guard, deadline) = self.admit()?;
        self.lose_if_dropped(&deadline, Error::ReadTimeout).await?;
        let read_time_ms = if serializable {
            if !self.is_member() {
                return Err(Error::NotMember);
            }
            self.serializable_read_time_ms()
        } else {
            await_linearizable(self, &deadline).await?.cluster_time_ms
        };
        Ok(self
            .state
            .read(|data, index| f(data, index, read_time_ms.max(data.last_stamp_ms()))))
    }

    /// Applies one conditional batch through the leader. A batch the state machine refused is
    /// [`Error::Refused`]: nothing of it was applied.
    pub(crate) async fn write(&self, req: proto::BatchRequest) -> Result<BatchOutcome> {
        let (_guard, deadline) = self.admit()?;
        self.lose_if_dropped(&deadline, Error::WriteTimeout).await?;
        self.check_batch(&req)?;
        match self.leadership() {
            Leadership::Here => match self.propose(req.clone(), &deadline).await {
                // Leadership moved before the entry was appended: the new leader can still take it.
                Err(Error::NotLeader { .. }) => match self.leadership() {
                    Leadership::There { id, addr } => {
                        self.forward_write(id, &addr, req, &deadline).await
                    }
                    _ => Err(self.not_leader()),
                },
                other => other,
            },
            Leadership::There { id, addr } => self.forward_write(id, &addr, req, &deadline).await,
            Leadership::Unknown => Err(self.not_leader()),
        }
    }

    async fn forward_write(
        &self,
        leader_id: u64,
        leader: &MemberAddr,
        req: proto::BatchRequest,
        deadline: &Deadline,
    ) -> Result<BatchOutcome> {
        if self.faults().blocks(leader_id) {
            // As if the connection could not be made: surely not applied.
            return Err(Error::NotLeader {
                leader: Some(leader.addr.clone()),
            });
        }
        let mut client = self.forwarder.kv(leader, deadline).await?;
        let mut request = tonic::Request::new(req);
        request.set_timeout(deadline.remaining());
        let held = self.faults().hold(leader_id);
        let call = async move {
            held.await;
            client.batch(request).await
        };
        outcome_from_proto(self.forwarder.relay(leader, deadline, true, call).await?)
    }

    /// Loses the request if the test-only fault layer says so: nothing answers it before its
    /// deadline, as if it never arrived, and then it times out the way `timeout` says.
    async fn lose_if_dropped(&self, deadline: &Deadline, timeout: fn(u64) -> Error) -> Result<()> {
        if self.faults().drops_request() {
            tokio::time::sleep(deadline.remaining()).await;
            return Err(timeout(deadline.total_ms()));
        }
        Ok(())
    }

    /// Approximate memory the state takes, as the quota counts it (keys, values and sessions).
    pub(crate) fn memory_used(&self) -> u64 {
        self.state.read(|data, _| data.memory_used())
    }

    /// Refuses a batch that would add data once the quota is used up or the disk is short of
    /// space; deletes, expiries and compare-only batches still pass, so space can always be
    /// freed. The quota of a write with a `WriteId` is checked when applied instead, after
    /// duplicate detection, so that a retry of a write already applied gets its outcome rather
    /// than a refusal (`store::data`); one refused for a full disk is looked up in the sessions
    /// first ([`Replica::answer_refused_write`]).
    fn check_quota(&self, cmd: &Command) -> Result<()> {
        if !cmd.batch.adds_data() {
            return Ok(());
        }
        let (used, quota) = (self.memory_used(), self.config.quota_bytes());
        if cmd.write_id.is_none() && used >= quota {
            return Err(Error::QuotaExceeded { used, quota });
        }
        self.check_disk_space()
    }

    /// [`Error::DiskFull`] when free space under the data directory is short of what the next
    /// snapshot needs (the stored data, as the quota counts it) plus `--disk-reserve-bytes`: a
    /// snapshot that cannot be written stops the Raft core, and equal disks fill together on
    /// every replica. A node in memory has no disk to fill.
    pub(crate) fn check_disk_space(&self) -> Result<()> {
        if self.config.in_memory {
            return Ok(());
        }
        let needed = self
            .memory_used()
            .saturating_add(self.config.disk_reserve_bytes);
        match crate::store::data_dir::free_bytes(&self.config.data_dir) {
            Ok(free) if free < needed => Err(Error::DiskFull { free, needed }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the free space of the data directory");
                Ok(())
            }
        }
    }

    async fn propose(&self, req: proto::BatchRequest, deadline: &Deadline) -> Result<BatchOutcome> {
        let mut cmd = command_of(req, self.stamp_ms()?)?;
        cmd.session.max_sessions = self.config.max_sessions;
        cmd.session.quota_bytes = self.config.quota_bytes();
        cmd.max_value_bytes = self.config.max_value_bytes as u64;
        if let Err(refused) = self.check_quota(&cmd) {
            return self.answer_refused_write(&cmd, refused, deadline).await;
        }
        let _slot = deadline
            .run(self.proposals.acquire())
            .await
            .map_err(|()| Error::Busy("too many writes in flight on the leader".into()))?
            .map_err(|_| Error::ShuttingDown)?;
        let written = deadline
            .run(self.raft.client_write(cmd))
            .await
            .map_err(|()| Error::WriteTimeout(deadline.total_ms()))?;
        match written {
            Ok(resp) => applied(resp.log_id.index, resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "write lost its leader after it was proposed");
                Err(Error::OutcomeUnknown(
                    "leadership changed while the write was in flight".into(),
                ))
            }
            Err(RaftError::Fatal(e)) => Err(Error::Fatal(e.to_string())),
        }
    }

    /// The answer to a write the leader refuses before proposing it (`refused`). A write with a
    /// `WriteId` refused for a full disk may be a retry of one already applied: once this leader
    /// has applied everything committed, the sessions tell, and a retry gets its remembered
    /// outcome (or that it is lost) rather than a "surely not applied" refusal.
    async fn answer_refused_write(
        &self,
        cmd: &Command,
        refused: Error,
        deadline: &Deadline,
    ) -> Result<BatchOutcome> {
        let Some(id) = cmd.write_id else {
            return Err(refused);
        };
        if !matches!(refused, Error::DiskFull { .. }) {
            return Err(refused);
        }
        let point = await_linearizable(self, deadline).await?;
        let remembered = self.state.read(|data, _| data.dedup(id, &cmd.session));
        refused_unless_remembered(refused, remembered, point.index)
    }

    /// On the leader: proposes deletes of up to `limit` keys whose expiry has passed, each
    /// conditioned on the key still being expired when applied, so an idle cluster still frees
    /// expired keys and every replica frees them at the same log index. Returns how many were
    /// proposed.
    pub(crate) async fn purge_expired(&self, limit: usize) -> Result<usize> {
        if !matches!(self.leadership(), Leadership::Here) {
            return Ok(0);
        }
        let stamp_ms = self.stamp_ms()?;
        let expired = self
            .state
            .read(|data, _| data.expired_keys(stamp_ms, limit));
        if expired.is_empty() {
            return Ok(0);
        }
        let count = expired.len();
        for key in expired {
            let cmd = Command {
                format: COMMAND_FORMAT,
                stamp_ms,
                write_id: None,
                batch: Batch {
                    compares: vec![Compare::Expired { key: key.clone() }],
                    ops: vec![Op::Delete { key }],
                    ..Batch::default()
                },
                max_value_bytes: self.config.max_value_bytes as u64,
                session: crate::store::command::SessionStamp::default(),
            };
            let deadline = Deadline::after(self.config.request_timeout());
            match deadline.run(self.raft.client_write(cmd)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Error::OutcomeUnknown(e.to_string())),
                Err(()) => return Err(Error::WriteTimeout(deadline.total_ms())),
            }
        }
        Ok(count)
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.config.max_key_bytes;
        if key.is_empty() {
            return Err(Error::InvalidArgument("key must not be empty".into()));
        }
        if key.len() > max {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.config.max_value_bytes;
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_batch(&self, req: &proto::BatchRequest) -> Result<()> {
        let ops = req.compares.len() + req.ops.len() + req.else_ops.len();
        if ops > self.config.max_batch_ops {
            return Err(Error::TooManyOps {
                ops,
                max: self.config.max_batch_ops,
            });
        }
        let mut bytes = 0;
        for c in &req.compares {
            self.check_key(&c.key)?;
            bytes += c.key.len();
            if let Some(proto::compare::Target::ValueEquals(v)) = &c.target {
                self.check_value(v)?;
                bytes += v.len();
            }
        }
        for op in req.ops.iter().chain(&req.else_ops) {
            let (key, value) = op_key_value(op)?;
            if let Some(key) = key {
                self.check_key(key)?;
                bytes += key.len();
            }
            if let Some(v) = value {
                self.check_value(v)?;
                bytes += v.len();
            }
        }
        if bytes > self.config.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                bytes,
                max: self.config.max_batch_bytes,
            });
        }
        Ok(())
    }
}

/// Wraps one op for a batch.
pub(crate) fn op(op: proto::op::Op) -> proto::Op {
    proto::Op { op: Some(op) }
}

/// The key (none for a clear) and value an op carries.
fn op_key_value(op: &proto::Op) -> Result<(Option<&Bytes>, Option<&Bytes>)> {
    use proto::op::Op as P;
    Ok(
        match op
            .op
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("empty op".into()))?
        {
            P::Put(p) => (Some(&p.key), Some(&p.value)),
            P::Append(a) => (Some(&a.key), Some(&a.value)),
            P::Delete(d) => (Some(&d.key), None),
            P::Increment(i) => (Some(&i.key), None),
            P::Expire(e) => (Some(&e.key), None),
            P::Persist(p) => (Some(&p.key), None),
            P::Clear(_) => (None, None),
        },
    )
}

/// The replicated command for a client's batch, stamped `stamp_ms`, carrying the client's
/// watermark but no limits (the leader adds its own, the value limit included); an op or compare the API does not allow
/// is an [`Error::InvalidArgument`].
pub(crate) fn command_of(req: proto::BatchRequest, stamp_ms: u64) -> Result<Command> {
    Ok(Command {
        format: COMMAND_FORMAT,
        stamp_ms,
        session: SessionStamp {
            acked_below: req.write_id.map_or(0, |w| w.acked_below),
            ..SessionStamp::default()
        },
        write_id: req.write_id.map(|w| WriteId {
            client_id: w.client_id,
            sequence: w.sequence,
        }),
        batch: Batch {
            compares: req
                .compares
                .into_iter()
                .map(compare_from_proto)
                .collect::<Result<_>>()?,
            ops: ops_from_proto(req.ops, stamp_ms)?,
            else_ops: ops_from_proto(req.else_ops, stamp_ms)?,
            return_previous: req.return_previous,
        },
        max_value_bytes: 0,
    })
}

fn compare_from_proto(c: proto::Compare) -> Result<Compare> {
    use proto::compare::Target;
    match c.target {
        Some(Target::ValueEquals(value)) => Ok(Compare::ValueEquals { key: c.key, value }),
        Some(Target::Exists(exists)) => Ok(Compare::Exists { key: c.key, exists }),
        None => Err(Error::InvalidArgument("compare without a target".into())),
    }
}

fn ops_from_proto(ops: Vec<proto::Op>, stamp_ms: u64) -> Result<Vec<Op>> {
    use proto::op::Op as P;
    ops.into_iter()
        .map(|op| {
            Ok(
                match op
                    .op
                    .ok_or_else(|| Error::InvalidArgument("empty op".into()))?
                {
                    P::Put(p) => Op::Put {
                        expiry: match (p.ttl_ms, p.keep_ttl, p.expires_at_ms) {
                            (Some(_), true, _) | (Some(_), _, Some(_)) | (_, true, Some(_)) => {
                                return Err(Error::InvalidArgument(
                                    "a put takes at most one of a TTL, an absolute expiry and \
                                     keeping the TTL"
                                        .into(),
                                ));
                            }
                            (Some(0), false, None) => {
                                return Err(Error::InvalidArgument("TTL must be positive".into()));
                            }
                            (Some(ttl), false, None) => PutExpiry::At(stamp_ms.saturating_add(ttl)),
                            (None, false, Some(at_ms)) => PutExpiry::At(at_ms),
                            (None, true, None) => PutExpiry::Keep,
                            (None, false, None) => PutExpiry::Clear,
                        },
                        key: p.key,
                        value: p.value,
                    },
                    P::Delete(d) => Op::Delete { key: d.key },
                    P::Increment(i) => Op::Increment {
                        key: i.key,
                        delta: i.delta,
                    },
                    P::Append(a) => Op::Append {
                        key: a.key,
                        value: a.value,
                    },
                    P::Expire(e) => Op::Expire {
                        at_ms: match (e.ttl_ms, e.expires_at_ms) {
                            (Some(ttl), 0) => stamp_ms.saturating_add(ttl),
                            (None, at_ms) => at_ms,
                            (Some(_), _) => {
                                return Err(Error::InvalidArgument(
                                    "an expire takes a TTL or an absolute expiry, not both".into(),
                                ));
                            }
                        },
                        key: e.key,
                    },
                    P::Persist(p) => Op::Persist { key: p.key },
                    P::Clear(_) => Op::Clear,
                },
            )
        })
        .collect()
}

/// The answer to a write refused before it was proposed (`refused`), given what the sessions
/// remember of it as of log index `index`: a duplicate gets its first outcome, a write whose
/// outcome is lost is told so, and only a write that was never applied gets the refusal.
fn refused_unless_remembered(
    refused: Error,
    remembered: Dedup,
    index: u64,
) -> Result<BatchOutcome> {
    match remembered {
        Dedup::Duplicate(outcome) => applied(index, outcome),
        Dedup::Refuse(refusal) if refusal.is_outcome_lost() => {
            applied(index, Outcome::Refused(refusal))
        }
        Dedup::New | Dedup::Refuse(_) => Err(refused),
    }
}

/// What the state machine's outcome of the entry at `entry_index` means for the client.
fn applied(entry_index: u64, outcome: Outcome) -> Result<BatchOutcome> {
    match outcome {
        Outcome::Applied(outcome) => Ok(outcome),
        Outcome::Refused(refusal) if refusal.is_outcome_lost() => {
            Err(Error::OutcomeLost(refusal.to_string()))
        }
        Outcome::Refused(Refusal::QuotaExceeded { used, quota }) => {
            Err(Error::QuotaExceeded { used, quota })
        }
        Outcome::Refused(refusal @ Refusal::TooManyInFlight { .. }) => {
            Err(Error::Busy(refusal.to_string()))
        }
        Outcome::Refused(refusal) => Err(Error::Refused {
            refusal,
            index: entry_index,
        }),
    }
}

/// The leader's answer to a forwarded batch, read back into the outcome it was made from
/// ([`outcome_to_proto`], [`refusal_to_proto`]). A refusal from a leader too old to type it is relayed as its text.
fn outcome_from_proto(resp: proto::BatchResponse) -> Result<BatchOutcome> {
    use proto::refusal::Kind;
    if let Some(refusal) = resp.refusal {
        let op = refusal.op as usize;
        let refusal = match refusal.kind() {
            Kind::NotAnInteger => Refusal::NotAnInteger { op },
            Kind::Overflow => Refusal::Overflow { op },
            Kind::ValueTooLarge => Refusal::ValueTooLarge { op },
            Kind::Unspecified => return Err(refused_as_text(resp.error)),
        };
        return Err(Error::Refused {
            refusal,
            index: resp.index,
        });
    }
    if !resp.error.is_empty() {
        return Err(refused_as_text(resp.error));
    }
    Ok(BatchOutcome {
        index: resp.index,
        succeeded: resp.succeeded,
        results: resp
            .results
            .into_iter()
            .map(|r| OpResult {
                existed: r.existed,
                previous: r.previous,
                integer: r.integer,
            })
            .collect(),
    })
}

/// A refusal known only by its text: relayed as the leader's own refusal status.
fn refused_as_text(error: String) -> Error {
    Error::Forwarded(tonic::Status::failed_precondition(format!(
        "refused: {error}"
    )))
}

/// The Batch reply to a batch that was applied (read back by [`outcome_from_proto`]).
pub(crate) fn outcome_to_proto(outcome: BatchOutcome) -> proto::BatchResponse {
    proto::BatchResponse {
        index: outcome.index,
        succeeded: outcome.succeeded,
        results: outcome
            .results
            .into_iter()
            .map(|r| proto::OpResult {
                existed: r.existed,
                previous: r.previous,
                integer: r.integer,
            })
            .collect(),
        error: String::new(),
        refusal: None,
    }
}

/// A refusal as the Batch reply types it (read back by [`outcome_from_proto`]); the face adds
/// its wording as the reply's `error`.
pub(crate) fn refusal_to_proto(refusal: &Refusal) -> proto::Refusal {
    use proto::refusal::Kind;
    let (kind, op) = match *refusal {
        Refusal::NotAnInteger { op } => (Kind::NotAnInteger, op),
        Refusal::Overflow { op } => (Kind::Overflow, op),
        Refusal::ValueTooLarge { op } => (Kind::ValueTooLarge, op),
        // Never reach a reply: the replica turns them into errors of their own.
        Refusal::SequenceTooOld { .. }
        | Refusal::SessionExpired { .. }
        | Refusal::ReplyNotKept { .. }
        | Refusal::TooManyInFlight { .. }
        | Refusal::QuotaExceeded { .. } => (Kind::Unspecified, 0),
    };
    proto::Refusal {
        kind: kind.into(),
        op: u32::try_from(op).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_refused_for_a_full_disk_gets_its_remembered_outcome_if_applied() {
        let full = || Error::DiskFull { free: 1, needed: 2 };
        let first = BatchOutcome {
            index: 4,
            succeeded: true,
            results: vec![],
        };
        let outcome =
            refused_unless_remembered(full(), Dedup::Duplicate(Outcome::Applied(first)), 9)
                .expect("a retry of an applied write gets its outcome");
        assert_eq!(outcome.index, 4);
        assert!(matches!(
            refused_unless_remembered(
                full(),
                Dedup::Refuse(Refusal::SessionExpired { sequence: 3 }),
                9
            ),
            Err(Error::OutcomeLost(_))
        ));
        assert!(matches!(
            refused_unless_remembered(
                full(),
                Dedup::Duplicate(Outcome::Refused(Refusal::NotAnInteger { op: 0 })),
                9
            ),
            Err(Error::Refused {
                refusal: Refusal::NotAnInteger { op: 0 },
                index: 9
            })
        ));
        assert!(matches!(
            refused_unless_remembered(full(), Dedup::New, 9),
            Err(Error::DiskFull { .. })
        ));
        assert!(matches!(
            refused_unless_remembered(
                full(),
                Dedup::Refuse(Refusal::TooManyInFlight {
                    sequence: 2000,
                    acked_below: 1,
                    limit: 1024
                }),
                9
            ),
            Err(Error::DiskFull { .. })
        ));
    }

    #[test]
    fn a_leaders_typed_refusal_is_read_back_as_the_refusal() {
        let reply = proto::BatchResponse {
            index: 12,
            error: "op 1: value is not an integer or out of range".into(),
            refusal: Some(proto::Refusal {
                kind: proto::refusal::Kind::NotAnInteger.into(),
                op: 1,
            }),
            ..Default::default()
        };
        assert!(matches!(
            outcome_from_proto(reply),
            Err(Error::Refused {
                refusal: Refusal::NotAnInteger { op: 1 },
                index: 12
            })
        ));
    }

    #[test]
    fn a_refusal_known_only_by_its_text_is_relayed_as_a_refusal_status() {
        let reply = proto::BatchResponse {
            error: "op 0: increment or decrement would overflow".into(),
            ..Default::default()
        };
        match outcome_from_proto(reply) {
            Err(Error::Forwarded(status)) => {
                assert_eq!(status.code(), tonic::Code::FailedPrecondition);
                assert_eq!(
                    status.message(),
                    "refused: op 0: increment or decrement would overflow"
                );
            }
            other => panic!("not relayed: {other:?}"),
        }
    }

    #[test]
    fn every_refusal_a_reply_can_carry_reads_back_as_itself() {
        for refusal in [
            Refusal::NotAnInteger { op: 4 },
            Refusal::Overflow { op: 0 },
            Refusal::ValueTooLarge { op: 2 },
        ] {
            let reply = proto::BatchResponse {
                index: 3,
                refusal: Some(refusal_to_proto(&refusal)),
                ..Default::default()
            };
            match outcome_from_proto(reply) {
                Err(Error::Refused {
                    refusal: back,
                    index: 3,
                }) => assert_eq!(back, refusal),
                other => panic!("{refusal:?} read back as {other:?}"),
            }
        }
    }

    #[test]
    fn an_applied_batch_keeps_its_results() {
        let reply = proto::BatchResponse {
            index: 7,
            succeeded: true,
            results: vec![proto::OpResult {
                existed: true,
                previous: Some(Bytes::from_static(b"v")),
                integer: 3,
            }],
            ..Default::default()
        };
        let outcome = outcome_from_proto(reply).expect("applied");
        assert_eq!(outcome.index, 7);
        assert!(outcome.succeeded);
        assert_eq!(outcome.results[0].previous.as_deref(), Some(&b"v"[..]));
        assert_eq!(outcome.results[0].integer, 3);
    }
}
