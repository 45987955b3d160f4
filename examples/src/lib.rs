//! The bank domain of `../shared/WORKLOADS.md`: the `Account` aggregate,
//! the `balances` projection and the `transfers` process manager.
#![deny(missing_docs)]

use eventfold_domain::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// A bank account.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether it has been opened.
    pub open: bool,
    /// Closed accounts refuse deposits, withdrawals and incoming transfers
    /// (refunds still come in).
    pub closed: bool,
    /// Frozen accounts refuse incoming transfers for now.
    pub frozen: bool,
    /// Its owner.
    pub owner: String,
    /// Its balance, in cents.
    pub balance: u64,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// Who owns it.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// Cents, at least 1.
        amount: u64,
    },
    /// Take money out.
    Withdraw {
        /// Cents, at least 1 and at most the balance.
        amount: u64,
    },
    /// Close the account.
    Close,
    /// Refuse incoming transfers until unfrozen.
    Freeze,
    /// Accept incoming transfers again.
    Unfreeze,
    /// Start a transfer: take the money out now; the `transfers` process
    /// manager credits `to` or refunds.
    TransferOut {
        /// The transfer's id (unique).
        transfer_id: String,
        /// The receiving account's id.
        to: String,
        /// Cents, at least 1 and at most the balance.
        amount: u64,
    },
    /// Credit an incoming transfer.
    ReceiveTransfer {
        /// The transfer's id.
        transfer_id: String,
        /// The sending account's id.
        from: String,
        /// Cents.
        amount: u64,
    },
    /// Give back the money of a transfer that did not go through; accepted
    /// even when the account is closed or frozen, so no money is lost.
    RefundTransfer {
        /// The transfer's id.
        transfer_id: String,
        /// Cents.
        amount: u64,
    },
    /// Records that a transfer will not be credited here. Sent under the
    /// command id of the credit, it fences it: see the `transfers` module.
    CancelTransfer {
        /// The transfer's id.
        transfer_id: String,
    },
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// Cents.
        amount: u64,
    },
    /// Money went out.
    Withdrawn {
        /// Cents.
        amount: u64,
    },
    /// The account was closed.
    Closed,
    /// The account was frozen.
    Frozen,
    /// The account was unfrozen.
    Unfrozen,
    /// Money went out for a transfer.
    TransferDebited {
        /// The transfer's id.
        transfer_id: String,
        /// The receiving account's id.
        to: String,
        /// Cents.
        amount: u64,
    },
    /// Money came in from a transfer.
    TransferCredited {
        /// The transfer's id.
        transfer_id: String,
        /// The sending account's id.
        from: String,
        /// Cents.
        amount: u64,
    },
    /// A transfer's money came back.
    TransferRefunded {
        /// The transfer's id.
        transfer_id: String,
        /// Cents.
        amount: u64,
    },
    /// A transfer will not be credited here.
    TransferCancelled {
        /// The transfer's id.
        transfer_id: String,
    },
}

impl AccountEvent {
    /// How the event changes the balance, in cents.
    pub fn balance_delta(&self) -> i128 {
        match self {
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => i128::from(*amount),
            AccountEvent::Withdrawn { amount } | AccountEvent::TransferDebited { amount, .. } => {
                -i128::from(*amount)
            }
            AccountEvent::Opened { .. }
            | AccountEvent::Closed
            | AccountEvent::Frozen
            | AccountEvent::Unfrozen
            | AccountEvent::TransferCancelled { .. } => 0,
        }
    }
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
            AccountEvent::Closed => "Closed",
            AccountEvent::Frozen => "Frozen",
            AccountEvent::Unfrozen => "Unfrozen",
            AccountEvent::TransferDebited { .. } => "TransferDebited",
            AccountEvent::TransferCredited { .. } => "TransferCredited",
            AccountEvent::TransferRefunded { .. } => "TransferRefunded",
            AccountEvent::TransferCancelled { .. } => "TransferCancelled",
        }
    }
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum AccountError {
    /// `Open` on an open account.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Any command but `Open` on an account never opened.
    #[error("the account is not open")]
    NotOpen,
    /// Money in or out of a closed account (refunds excepted).
    #[error("the account is closed")]
    Closed,
    /// An incoming transfer to a frozen account.
    #[error("the account is frozen")]
    Frozen,
    /// An amount of 0.
    #[error("the amount must be at least 1")]
    ZeroAmount,
    /// A withdrawal beyond the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// Money in (a deposit, a transfer's credit or refund) that would take
    /// the balance past `u64::MAX` cents: refused, so that no event is
    /// written that the balance cannot hold.
    #[error("the balance would overflow: balance {balance}, incoming {incoming}")]
    BalanceOverflow {
        /// The balance.
        balance: u64,
        /// The amount coming in.
        incoming: u64,
    },
}

impl Account {
    fn overflow(&self, incoming: u64) -> AccountError {
        AccountError::BalanceOverflow {
            balance: self.balance,
            incoming,
        }
    }
}

impl Aggregate for Account {
    const KIND: &'static str = "acc";
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        use AccountEvent as E;
        if let C::Open { owner } = command {
            return if self.open {
                Err(AccountError::AlreadyOpen)
            } else {
                Ok(vec![E::Opened { owner }])
            };
        }
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        match command {
            C::Open { .. } => Err(AccountError::AlreadyOpen),
            C::RefundTransfer { amount, .. } if self.balance.checked_add(amount).is_none() => {
                Err(self.overflow(amount))
            }
            // Refused only when the balance would overflow (above): the
            // money of a transfer always has a way back, closed or frozen.
            C::RefundTransfer {
                transfer_id,
                amount,
            } => Ok(vec![E::TransferRefunded {
                transfer_id,
                amount,
            }]),
            C::CancelTransfer { transfer_id } => Ok(vec![E::TransferCancelled { transfer_id }]),
            _ if self.closed => Err(AccountError::Closed),
            C::Close => Ok(vec![E::Closed]),
            C::Freeze => Ok(if self.frozen { vec![] } else { vec![E::Frozen] }),
            C::Unfreeze => Ok(if self.frozen {
                vec![E::Unfrozen]
            } else {
                vec![]
            }),
            C::Deposit { amount: 0 }
            | C::Withdraw { amount: 0 }
            | C::TransferOut { amount: 0, .. }
            | C::ReceiveTransfer { amount: 0, .. } => Err(AccountError::ZeroAmount),
            C::Deposit { amount } | C::ReceiveTransfer { amount, .. }
                if self.balance.checked_add(amount).is_none() =>
            {
                Err(self.overflow(amount))
            }
            C::Deposit { amount } => Ok(vec![E::Deposited { amount }]),
            C::Withdraw { amount } | C::TransferOut { amount, .. } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            C::Withdraw { amount } => Ok(vec![E::Withdrawn { amount }]),
            C::TransferOut {
                transfer_id,
                to,
                amount,
            } => Ok(vec![E::TransferDebited {
                transfer_id,
                to,
                amount,
            }]),
            C::ReceiveTransfer { .. } if self.frozen => Err(AccountError::Frozen),
            C::ReceiveTransfer {
                transfer_id,
                from,
                amount,
            } => Ok(vec![E::TransferCredited {
                transfer_id,
                from,
                amount,
            }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.open = true;
                self.owner.clone_from(owner);
            }
            AccountEvent::Closed => self.closed = true,
            AccountEvent::Frozen => self.frozen = true,
            AccountEvent::Unfrozen => self.frozen = false,
            other => {
                // `handle` refuses what would leave the range, so an event
                // that does is not one this code wrote: fail the load
                // (the runtime turns the panic into a typed
                // `LoadError::Panicked` naming it) rather than invent a
                // balance.
                let balance = i128::from(self.balance) + other.balance_delta();
                match u64::try_from(balance) {
                    Ok(balance) => self.balance = balance,
                    Err(_) => panic!(
                        "{other:?} takes the balance {} out of range (0..=u64::MAX)",
                        self.balance
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventfold_domain::AggregateFixture;

    fn opened() -> AccountEvent {
        AccountEvent::Opened {
            owner: "ann".into(),
        }
    }

    #[test]
    fn open_deposit_withdraw() {
        AggregateFixture::<Account>::given_no_history()
            .when(AccountCommand::Open {
                owner: "ann".into(),
            })
            .then_events([opened()]);
        AggregateFixture::<Account>::given([opened()])
            .when(AccountCommand::Deposit { amount: 10 })
            .then_events([AccountEvent::Deposited { amount: 10 }]);
        AggregateFixture::<Account>::given([opened(), AccountEvent::Deposited { amount: 10 }])
            .when(AccountCommand::Withdraw { amount: 10 })
            .then_events([AccountEvent::Withdrawn { amount: 10 }]);
    }

    #[test]
    fn refusals() {
        AggregateFixture::<Account>::given([opened()])
            .when(AccountCommand::Open {
                owner: "bob".into(),
            })
            .then_error(AccountError::AlreadyOpen);
        AggregateFixture::<Account>::given_no_history()
            .when(AccountCommand::Deposit { amount: 1 })
            .then_error(AccountError::NotOpen);
        AggregateFixture::<Account>::given([opened()])
            .when(AccountCommand::Deposit { amount: 0 })
            .then_error(AccountError::ZeroAmount);
        AggregateFixture::<Account>::given([opened(), AccountEvent::Deposited { amount: 5 }])
            .when(AccountCommand::Withdraw { amount: 6 })
            .then_error(AccountError::InsufficientFunds {
                balance: 5,
                requested: 6,
            });
    }

    // Regression: a deposit of u64::MAX to an account holding 1 cent was
    // accepted, and `apply` then set the balance to 0: the money vanished.
    #[test]
    fn money_in_that_would_overflow_the_balance_is_refused() {
        let one_cent = [opened(), AccountEvent::Deposited { amount: 1 }];
        let overflow = AccountError::BalanceOverflow {
            balance: 1,
            incoming: u64::MAX,
        };
        AggregateFixture::<Account>::given(one_cent.clone())
            .when(AccountCommand::Deposit { amount: u64::MAX })
            .then_error(overflow.clone());
        AggregateFixture::<Account>::given(one_cent.clone())
            .when(AccountCommand::ReceiveTransfer {
                transfer_id: "t1".into(),
                from: "b".into(),
                amount: u64::MAX,
            })
            .then_error(overflow.clone());
        AggregateFixture::<Account>::given(one_cent.clone())
            .when(AccountCommand::RefundTransfer {
                transfer_id: "t1".into(),
                amount: u64::MAX,
            })
            .then_error(overflow);
        AggregateFixture::<Account>::given(one_cent)
            .when(AccountCommand::Deposit {
                amount: u64::MAX - 1,
            })
            .then_events([AccountEvent::Deposited {
                amount: u64::MAX - 1,
            }]);
    }

    // An event this code would refuse (written by other code, or by a bug)
    // fails the load instead of being folded into an invented balance.
    #[test]
    fn an_event_that_overflows_the_balance_is_never_folded() {
        let mut account = Account::default();
        account.apply(&opened());
        account.apply(&AccountEvent::Deposited { amount: u64::MAX });
        let folded = std::panic::catch_unwind(move || {
            account.apply(&AccountEvent::Deposited { amount: 1 });
            account.balance
        });
        assert!(folded.is_err(), "the balance was invented: {folded:?}");
    }

    #[test]
    fn state_folds_events() {
        let state =
            AggregateFixture::<Account>::given([opened(), AccountEvent::Deposited { amount: 7 }])
                .when(AccountCommand::Withdraw { amount: 2 })
                .state_after();
        assert_eq!(state.balance, 5);
        assert_eq!(state.owner, "ann");
    }
}

/// The balances read model: the balance of each account (key: account
/// stream id) and the total of all balances (key: `total`).
pub mod balances {
    use super::AccountEvent;
    use eventfold_runtime::domain::RecordedEvent;
    use eventfold_runtime::projection::{HandlerError, Projection, ReadModelTx, decode};
    use eventfold_runtime::storage::Filter;

    /// The projection's name.
    pub const NAME: &str = "balances";
    /// The key of the total.
    pub const TOTAL_KEY: &[u8] = b"total";

    /// Keeps the balances read model.
    #[derive(Default)]
    pub struct Balances;

    impl Projection for Balances {
        fn name(&self) -> &str {
            NAME
        }

        fn filter(&self) -> Filter {
            Filter::categories([<super::Account as eventfold_runtime::domain::Aggregate>::KIND])
        }

        fn apply(
            &mut self,
            event: &RecordedEvent,
            model: &mut ReadModelTx<'_>,
        ) -> Result<(), HandlerError> {
            let delta = decode::<AccountEvent>(event)?.balance_delta();
            let key = event.stream_id.as_str().as_bytes();
            let balance: i128 = model.get_as(key)?.unwrap_or(0);
            model.put_as(key, &(balance + delta))?;
            let total: i128 = model.get_as(TOTAL_KEY)?.unwrap_or(0);
            model.put_as(TOTAL_KEY, &(total + delta))
        }
    }
}

/// The `transfers` process manager: moves money between two accounts.
///
/// 1. `TransferOut` on the source account takes the money out
///    (`TransferDebited`) and starts an instance, keyed by the transfer id.
/// 2. The instance sends `ReceiveTransfer` to the target with one command id
///    for all its attempts, and sets a deadline.
/// 3. Credited: the transfer is completed. Refused because the target is
///    frozen: it tries again every `retry_every`. Refused otherwise (closed,
///    never opened): it refunds the source — compensation.
/// 4. At the deadline, a credit whose fate is unknown is *fenced*:
///    `CancelTransfer` is sent under the credit's command id, so the target
///    executes exactly one of the two. If the cancel won, the source is
///    refunded; if the credit had won, the transfer is completed.
///
/// Money is conserved at every step: a transfer is either credited once or
/// refunded once, never both.
pub mod transfers {
    use super::{Account, AccountCommand, AccountError, AccountEvent};
    use eventfold_runtime::domain::{Aggregate, CommandId, RecordedEvent};
    use eventfold_runtime::process::{Association, CommandResult, Effects, Input, ProcessManager};
    use eventfold_runtime::projection::decode;
    use eventfold_runtime::storage::Filter;
    use serde::{Deserialize, Serialize};
    use std::time::Duration;

    /// The process manager's name.
    pub const NAME: &str = "transfers";
    /// The deadline timer.
    pub const DEADLINE: &str = "deadline";
    /// The timer of the next attempt.
    pub const RETRY: &str = "retry";

    /// Where a transfer stands.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Phase {
        /// Not started.
        #[default]
        New,
        /// The credit was sent; waiting for its result.
        Crediting,
        /// The target refused for now (frozen) or could not be reached; the
        /// credit is sent again when the retry timer fires.
        WaitingRetry,
        /// The deadline passed: the credit is being fenced by a cancel.
        Cancelling,
        /// The source is being refunded.
        Refunding {
            /// Why.
            reason: String,
        },
        /// Credited to the target.
        Completed,
        /// Refunded to the source.
        Compensated {
            /// Why.
            reason: String,
        },
    }

    /// A transfer's state.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Transfer {
        /// The source account's id.
        pub from: String,
        /// The target account's id.
        pub to: String,
        /// Cents.
        pub amount: u64,
        /// Where it stands.
        pub phase: Phase,
        /// The command id of the credit (all attempts, and the fence).
        pub credit: Option<CommandId>,
        /// The command id of the refund.
        pub refund: Option<CommandId>,
        /// Credits sent.
        pub attempts: u32,
    }

    /// Why the process manager could not handle an input.
    #[derive(Debug, thiserror::Error)]
    pub enum TransferError {
        /// The event could not be decoded.
        #[error("undecodable event: {0}")]
        Undecodable(String),
        /// The source refused the refund: the money is held by the transfer
        /// until someone looks at it (the instance is parked as stuck).
        #[error("the refund was refused: {0}")]
        RefundRefused(String),
        /// A result that fits no state.
        #[error("unexpected result: {0}")]
        Unexpected(String),
    }

    /// The process manager.
    #[derive(Clone, Debug)]
    pub struct TransferProcess {
        /// How long a credit may stay unresolved before it is fenced and the
        /// source refunded.
        pub deadline: Duration,
        /// Wait between credit attempts to a frozen target (and between
        /// attempts of a cancel or refund that could not be delivered).
        pub retry_every: Duration,
    }

    impl Default for TransferProcess {
        fn default() -> Self {
            Self {
                deadline: Duration::from_secs(30),
                retry_every: Duration::from_millis(500),
            }
        }
    }

    fn account_id(event: &RecordedEvent) -> String {
        let stream = event.stream_id.as_str();
        stream
            .strip_prefix(Account::KIND)
            .and_then(|rest| rest.strip_prefix('-'))
            .unwrap_or(stream)
            .to_owned()
    }

    impl TransferProcess {
        fn send_credit(&self, state: &mut Transfer, effects: &mut Effects) {
            let command = AccountCommand::ReceiveTransfer {
                transfer_id: effects.instance().to_owned(),
                from: state.from.clone(),
                amount: state.amount,
            };
            match state.credit {
                Some(id) => effects.send_with_id::<Account>(id, &state.to, command),
                None => state.credit = Some(effects.send::<Account>(&state.to, command)),
            }
            state.attempts += 1;
            state.phase = Phase::Crediting;
        }

        fn send_cancel(&self, state: &mut Transfer, effects: &mut Effects) {
            if let Some(id) = state.credit {
                let command = AccountCommand::CancelTransfer {
                    transfer_id: effects.instance().to_owned(),
                };
                effects.send_with_id::<Account>(id, &state.to, command);
            }
            state.phase = Phase::Cancelling;
            effects.set_timer_after(RETRY, self.retry_every);
        }

        fn send_refund(&self, state: &mut Transfer, effects: &mut Effects, reason: String) {
            let command = AccountCommand::RefundTransfer {
                transfer_id: effects.instance().to_owned(),
                amount: state.amount,
            };
            match state.refund {
                Some(id) => effects.send_with_id::<Account>(id, &state.from, command),
                None => state.refund = Some(effects.send::<Account>(&state.from, command)),
            }
            effects.cancel_timer(DEADLINE);
            state.phase = Phase::Refunding { reason };
        }

        /// The credit (or its fence) was executed: which one won?
        fn settled(
            &self,
            state: &mut Transfer,
            effects: &mut Effects,
            events: &[AccountEvent],
        ) -> Result<(), TransferError> {
            let credited = events
                .iter()
                .any(|e| matches!(e, AccountEvent::TransferCredited { .. }));
            let cancelled = events
                .iter()
                .any(|e| matches!(e, AccountEvent::TransferCancelled { .. }));
            if credited {
                state.phase = Phase::Completed;
                effects.finish();
            } else if cancelled {
                effects.cancel_timer(RETRY);
                self.send_refund(state, effects, "deadline passed".into());
            } else {
                return Err(TransferError::Unexpected(format!(
                    "the credit produced {events:?}"
                )));
            }
            Ok(())
        }

        fn on_result(
            &self,
            state: &mut Transfer,
            result: &CommandResult,
            effects: &mut Effects,
        ) -> Result<(), TransferError> {
            let is_credit = state.credit == Some(result.command_id);
            let is_refund = state.refund == Some(result.command_id);
            match (&state.phase, is_credit, is_refund) {
                (Phase::Crediting, true, _) => {
                    if let Some(events) = result.events::<Account>() {
                        return self.settled(state, effects, events);
                    }
                    match result.rejection::<Account>() {
                        // Refused for now: try again later, same command id.
                        Some(AccountError::Frozen) | None => {
                            state.phase = Phase::WaitingRetry;
                            effects.set_timer_after(RETRY, self.retry_every);
                        }
                        Some(refusal) => self.send_refund(state, effects, refusal.to_string()),
                    }
                }
                (Phase::Cancelling, true, _) => {
                    // Only an executed command settles it; the retry timer
                    // sends the cancel again until one is.
                    if let Some(events) = result.events::<Account>() {
                        return self.settled(state, effects, events);
                    }
                }
                (Phase::Refunding { reason }, _, true) => {
                    if result.is_accepted() {
                        state.phase = Phase::Compensated {
                            reason: reason.clone(),
                        };
                        effects.finish();
                    } else if let Some(refusal) = result.rejection::<Account>() {
                        return Err(TransferError::RefundRefused(refusal.to_string()));
                    } else {
                        effects.set_timer_after(RETRY, self.retry_every);
                    }
                }
                // A late answer to something already settled.
                _ => {}
            }
            Ok(())
        }
    }

    impl ProcessManager for TransferProcess {
        type State = Transfer;
        type Error = TransferError;

        fn name(&self) -> &str {
            NAME
        }

        fn filter(&self) -> Filter {
            Filter::event_types(["TransferDebited"])
        }

        fn associate(&self, event: &RecordedEvent) -> Association {
            match decode::<AccountEvent>(event) {
                Ok(AccountEvent::TransferDebited { transfer_id, .. }) => {
                    Association::Start(transfer_id)
                }
                _ => Association::Ignore,
            }
        }

        fn handle(
            &mut self,
            state: &mut Transfer,
            input: Input<'_>,
            effects: &mut Effects,
        ) -> Result<(), TransferError> {
            match input {
                Input::Event(event) => {
                    let decoded = decode::<AccountEvent>(event)
                        .map_err(|e| TransferError::Undecodable(e.to_string()))?;
                    let AccountEvent::TransferDebited { to, amount, .. } = decoded else {
                        return Ok(());
                    };
                    if state.phase != Phase::New {
                        return Ok(());
                    }
                    state.from = account_id(event);
                    state.to = to;
                    state.amount = amount;
                    effects.set_timer_after(DEADLINE, self.deadline);
                    self.send_credit(state, effects);
                }
                Input::Result(result) => self.on_result(state, result, effects)?,
                Input::Timer(timer) => match (timer.name.as_str(), &state.phase) {
                    (RETRY, Phase::WaitingRetry) => self.send_credit(state, effects),
                    (RETRY, Phase::Cancelling) => self.send_cancel(state, effects),
                    (RETRY, Phase::Refunding { reason }) => {
                        let reason = reason.clone();
                        self.send_refund(state, effects, reason);
                    }
                    (DEADLINE, Phase::Crediting | Phase::WaitingRetry) => {
                        effects.cancel_timer(RETRY);
                        self.send_cancel(state, effects);
                    }
                    _ => {}
                },
            }
            Ok(())
        }
    }

    /// What the log says about transfers: see [`audit`].
    #[derive(Debug, Default)]
    pub struct Audit {
        /// Transfers credited to their target.
        pub completed: u64,
        /// Transfers refunded to their source.
        pub compensated: u64,
        /// Transfers debited and not yet credited or refunded.
        pub open: u64,
        /// Sum of every account's balance, from the log.
        pub total_money: i128,
        /// Sum of every deposit minus every withdrawal.
        pub deposited: i128,
        /// When the last transfer finished (recorded-at, µs).
        pub last_finished_us: u64,
        /// Ids of the transfers debited.
        pub debited: std::collections::HashSet<String>,
    }

    /// Reads every account event of the log once and checks that each
    /// transfer was debited exactly once and then credited or refunded at
    /// most once, never both; counts them and sums the money.
    pub fn audit(store: &dyn eventfold_runtime::storage::EventStore) -> Result<Audit, String> {
        #[derive(Default)]
        struct Seen {
            debits: u32,
            credits: u32,
            refunds: u32,
            finished_at: u64,
        }
        let mut seen: std::collections::HashMap<String, Seen> = std::collections::HashMap::new();
        let mut audit = Audit::default();
        let filter = Filter::categories([Account::KIND]);
        let head = store.head();
        let mut from = 1;
        while from <= head {
            let slice = store
                .read_all(from, 65_536, &filter)
                .map_err(|e| e.to_string())?;
            for event in &slice.events {
                let decoded = decode::<AccountEvent>(event).map_err(|e| e.to_string())?;
                audit.total_money += decoded.balance_delta();
                let at = event.recorded_at.as_micros();
                match decoded {
                    AccountEvent::Deposited { amount } => audit.deposited += i128::from(amount),
                    AccountEvent::Withdrawn { amount } => audit.deposited -= i128::from(amount),
                    AccountEvent::TransferDebited { transfer_id, .. } => {
                        let entry = seen.entry(transfer_id).or_default();
                        entry.debits += 1;
                    }
                    AccountEvent::TransferCredited { transfer_id, .. } => {
                        let entry = seen.entry(transfer_id).or_default();
                        entry.credits += 1;
                        entry.finished_at = at;
                    }
                    AccountEvent::TransferRefunded { transfer_id, .. } => {
                        let entry = seen.entry(transfer_id).or_default();
                        entry.refunds += 1;
                        entry.finished_at = at;
                    }
                    _ => {}
                }
            }
            from = slice.next_position;
        }
        for (id, transfer) in seen {
            match (transfer.debits, transfer.credits, transfer.refunds) {
                (1, 1, 0) => audit.completed += 1,
                (1, 0, 1) => audit.compensated += 1,
                (1, 0, 0) => {
                    audit.open += 1;
                    audit.debited.insert(id);
                    continue;
                }
                (d, c, r) => {
                    return Err(format!(
                        "transfer {id}: {d} debits, {c} credits, {r} refunds; expected one debit, then one credit or one refund"
                    ));
                }
            }
            audit.last_finished_us = audit.last_finished_us.max(transfer.finished_at);
            audit.debited.insert(id);
        }
        Ok(audit)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use eventfold_runtime::domain::Timestamp;
        use eventfold_runtime::process::{OutgoingCommand, ProcessFixture, StepOutcome};

        const SECOND: Duration = Duration::from_secs(1);

        fn fixture() -> ProcessFixture<TransferProcess> {
            ProcessFixture::new(
                TransferProcess {
                    deadline: SECOND * 10,
                    retry_every: SECOND,
                },
                Timestamp::from_micros(0),
            )
        }

        fn debit(f: &mut ProcessFixture<TransferProcess>) -> Result<StepOutcome, TransferError> {
            f.when_event(
                "acc-a",
                AccountEvent::TransferDebited {
                    transfer_id: "t1".into(),
                    to: "b".into(),
                    amount: 5,
                },
            )
        }

        fn only(step: &StepOutcome) -> &OutgoingCommand {
            assert_eq!(step.commands.len(), 1, "{step:?}");
            &step.commands[0]
        }

        fn refund_of_t1() -> Vec<(String, AccountCommand)> {
            vec![(
                "a".to_owned(),
                AccountCommand::RefundTransfer {
                    transfer_id: "t1".into(),
                    amount: 5,
                },
            )]
        }

        fn credited() -> AccountEvent {
            AccountEvent::TransferCredited {
                transfer_id: "t1".into(),
                from: "a".into(),
                amount: 5,
            }
        }

        #[test]
        fn a_debit_credits_the_target_and_completes() -> Result<(), TransferError> {
            let mut f = fixture();
            let step = debit(&mut f)?;
            assert_eq!(
                step.commands_to::<Account>(),
                vec![(
                    "b".to_owned(),
                    AccountCommand::ReceiveTransfer {
                        transfer_id: "t1".into(),
                        from: "a".into(),
                        amount: 5
                    }
                )]
            );
            assert_eq!(
                step.timers_set(),
                vec![(DEADLINE.to_owned(), Timestamp::from_micros(10_000_000))]
            );
            let credit = only(&step).clone();
            let step = f.when_result(CommandResult::accepted::<Account>(
                &credit,
                vec![credited()],
            ))?;
            assert!(step.finished && step.commands.is_empty());
            assert_eq!(f.state("t1").map(|s| &s.phase), Some(&Phase::Completed));
            // Finished: the deadline never fires.
            assert!(f.timers().is_empty());
            assert!(f.when_elapsed(SECOND * 60)?.commands.is_empty());
            // A replayed debit does nothing.
            assert!(debit(&mut f)?.commands.is_empty());
            Ok(())
        }

        #[test]
        fn a_refused_credit_is_refunded() -> Result<(), TransferError> {
            let mut f = fixture();
            let credit = only(&debit(&mut f)?).clone();
            let step = f.when_result(CommandResult::rejected::<Account>(
                &credit,
                AccountError::Closed,
            ))?;
            assert_eq!(step.commands_to::<Account>(), refund_of_t1());
            assert_eq!(step.timers_cancelled(), vec![DEADLINE.to_owned()]);
            let refund = only(&step).clone();
            let step = f.when_result(CommandResult::accepted::<Account>(
                &refund,
                vec![AccountEvent::TransferRefunded {
                    transfer_id: "t1".into(),
                    amount: 5,
                }],
            ))?;
            assert!(step.finished);
            assert_eq!(
                f.state("t1").map(|s| s.phase.clone()),
                Some(Phase::Compensated {
                    reason: "the account is closed".into()
                })
            );
            Ok(())
        }

        #[test]
        fn a_frozen_target_is_retried_with_the_same_command_id_then_fenced_at_the_deadline()
        -> Result<(), TransferError> {
            let mut f = fixture();
            let credit = only(&debit(&mut f)?).clone();
            let step = f.when_result(CommandResult::rejected::<Account>(
                &credit,
                AccountError::Frozen,
            ))?;
            assert!(step.commands.is_empty());
            assert_eq!(step.timers_set().len(), 1);
            let retry = f.when_elapsed(SECOND)?;
            assert_eq!(only(&retry).command_id, credit.command_id);
            // Still frozen at the deadline: the cancel goes out under the
            // credit's id.
            f.when_result(CommandResult::rejected::<Account>(
                &credit,
                AccountError::Frozen,
            ))?;
            let mut fenced = None;
            for _ in 0..10 {
                let step = f.when_elapsed(SECOND)?;
                if let Some(cancel) = step.commands.iter().find(|c| {
                    matches!(
                        c.decode::<Account>(),
                        Some(AccountCommand::CancelTransfer { .. })
                    )
                }) {
                    fenced = Some(cancel.clone());
                    break;
                }
            }
            let cancel = fenced.expect("the deadline sends a cancel");
            assert_eq!(cancel.command_id, credit.command_id);
            assert_eq!(f.state("t1").map(|s| &s.phase), Some(&Phase::Cancelling));
            // The cancel won: refund.
            let step = f.when_result(CommandResult::accepted::<Account>(
                &cancel,
                vec![AccountEvent::TransferCancelled {
                    transfer_id: "t1".into(),
                }],
            ))?;
            assert_eq!(step.commands_to::<Account>(), refund_of_t1());
            Ok(())
        }

        #[test]
        fn a_fence_that_finds_the_credit_executed_completes() -> Result<(), TransferError> {
            let mut f = fixture();
            let credit = only(&debit(&mut f)?).clone();
            // No answer before the deadline (the target is slow).
            let step = f.when_elapsed(SECOND * 10)?;
            let cancel = only(&step).clone();
            assert_eq!(cancel.command_id, credit.command_id);
            // The credit had been executed: the cancel gets its outcome.
            let step = f.when_result(CommandResult::accepted::<Account>(
                &cancel,
                vec![credited()],
            ))?;
            assert!(step.finished && step.commands.is_empty());
            assert_eq!(f.state("t1").map(|s| &s.phase), Some(&Phase::Completed));
            Ok(())
        }

        #[test]
        fn an_undeliverable_refund_is_sent_again_until_it_lands() -> Result<(), TransferError> {
            let mut f = fixture();
            let credit = only(&debit(&mut f)?).clone();
            let refund = only(&f.when_result(CommandResult::rejected::<Account>(
                &credit,
                AccountError::NotOpen,
            ))?)
            .clone();
            f.when_result(CommandResult::failed(&refund, "overloaded"))?;
            let again = f.when_elapsed(SECOND)?;
            assert_eq!(only(&again).command_id, refund.command_id);
            Ok(())
        }
    }
}
