//! Root filesystem preparation for tako-vm sandboxes.
