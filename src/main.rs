//! The `amr-gateway` command line.

fn main() {
    println!("amr-gateway");
}
