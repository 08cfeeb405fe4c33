//! Client-side integration tests live in tests/.
