//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does not know it reads
//! them: without this, a new or edited migration is not picked up until a source file changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
