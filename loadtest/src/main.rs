//! simplepush-loadtest: the bundled load tester. Its scenarios arrive with the load-test issue.

fn main() {
    eprintln!("simplepush-loadtest: no scenarios yet (see the load-test issue)");
    std::process::exit(2);
}
