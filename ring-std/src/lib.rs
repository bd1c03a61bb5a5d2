//! std glue for ring-core.
