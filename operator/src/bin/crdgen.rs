//! `crdgen`: prints the KvsCluster CRD as YAML on stdout and nothing else, so
//! `crdgen > crds/kvscluster.yaml` regenerates the checked-in file.

fn main() {
    print!("{}", kvs_operator::crd::crd_yaml());
}
