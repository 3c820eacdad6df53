//! `crdgen`: prints a CRD as YAML on stdout and nothing else, so `crdgen > crds/kvscluster.yaml`
//! and `crdgen kvsbackup > crds/kvsbackup.yaml` regenerate the checked-in files.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("kvscluster") => print!("{}", kvs_operator::crd::crd_yaml()),
        Some("kvsbackup") => print!("{}", kvs_operator::backup::crd::crd_yaml()),
        Some(other) => {
            eprintln!("crdgen: unknown CRD {other:?}; known: kvscluster, kvsbackup");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
