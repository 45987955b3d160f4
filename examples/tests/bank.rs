//! The bank through the runtime: accounts, refusals, and the balances
//! projection read with read-your-writes.

use eventfold_examples::balances::{self, Balances};
use eventfold_examples::{Account, AccountCommand, AccountError};
use eventfold_runtime::{CommandError, ConsumerSettings, Runtime};
use std::time::Duration;

#[test]
fn balances_follow_deposits_and_withdrawals() {
    let runtime = Runtime::builder()
        .temporary()
        .aggregate::<Account>()
        .projection(|| Balances, ConsumerSettings::default())
        .start()
        .unwrap();
    for id in ["1", "2", "3"] {
        runtime
            .execute_blocking::<Account>(
                id,
                AccountCommand::Open {
                    owner: format!("owner {id}"),
                },
            )
            .unwrap();
    }
    runtime
        .execute_blocking::<Account>("1", AccountCommand::Deposit { amount: 100 })
        .unwrap();
    runtime
        .execute_blocking::<Account>("2", AccountCommand::Deposit { amount: 50 })
        .unwrap();
    let refused = runtime.execute_blocking::<Account>("3", AccountCommand::Withdraw { amount: 1 });
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(AccountError::InsufficientFunds {
            balance: 0,
            requested: 1
        }))
    ));
    let last = runtime
        .execute_blocking::<Account>("1", AccountCommand::Withdraw { amount: 30 })
        .unwrap();
    runtime
        .wait_for_blocking(
            balances::NAME,
            last.position.unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    let view = runtime.query(balances::NAME).unwrap();
    let balance = |key: &[u8]| view.get_as::<i128>(key).unwrap();
    assert_eq!(balance(b"acc-1"), Some(70));
    assert_eq!(balance(b"acc-2"), Some(50));
    assert_eq!(balance(b"acc-3"), Some(0));
    assert_eq!(balance(balances::TOTAL_KEY), Some(120));
    runtime.shutdown_blocking().unwrap();
}
