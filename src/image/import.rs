//! Import of OCI layouts and docker-save archives.
