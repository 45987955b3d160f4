//! The bank domain of `../shared/WORKLOADS.md`: the `Account` aggregate.
#![deny(missing_docs)]

use eventfold_domain::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// A bank account.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Whether it has been opened.
    pub open: bool,
    /// Its owner.
    pub owner: String,
    /// Its balance, in cents.
    pub balance: u64,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq)]
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
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
        }
    }
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountError {
    /// `Open` on an open account.
    #[error("the account is already open")]
    AlreadyOpen,
    /// `Deposit` or `Withdraw` on an account never opened.
    #[error("the account is not open")]
    NotOpen,
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
}

impl Aggregate for Account {
    const KIND: &'static str = "acc";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
            AccountCommand::Deposit { .. } | AccountCommand::Withdraw { .. } if !self.open => {
                Err(AccountError::NotOpen)
            }
            AccountCommand::Deposit { amount: 0 } | AccountCommand::Withdraw { amount: 0 } => {
                Err(AccountError::ZeroAmount)
            }
            AccountCommand::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw { amount } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            AccountCommand::Withdraw { amount } => Ok(vec![AccountEvent::Withdrawn { amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.open = true;
                self.owner.clone_from(owner);
            }
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
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
            let delta: i128 = match decode::<AccountEvent>(event)? {
                AccountEvent::Opened { .. } => 0,
                AccountEvent::Deposited { amount } => i128::from(amount),
                AccountEvent::Withdrawn { amount } => -i128::from(amount),
            };
            let key = event.stream_id.as_str().as_bytes();
            let balance: i128 = model.get_as(key)?.unwrap_or(0);
            model.put_as(key, &(balance + delta))?;
            let total: i128 = model.get_as(TOTAL_KEY)?.unwrap_or(0);
            model.put_as(TOTAL_KEY, &(total + delta))
        }
    }
}
