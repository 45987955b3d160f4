//! `eventfold`, the inspector, with the bank's events decoded. See the
//! crate's documentation, or `eventfold --help`.

use eventfold_cli::Inspector;
use eventfold_examples::Account;

fn main() -> std::process::ExitCode {
    Inspector::new().aggregate::<Account>().run()
}
