//! keyward's user story end to end, as a library so both the narrated demo (`keyward-demo`)
//! and the CI test (`tests/story.rs` in the product crate) run the same steps. Test support:
//! it needs the repository, a Python venv and kubectl, so it never ships in the image.

pub mod story;
