//! Network slots: pooled network namespaces, veth pairs, addresses and egress rules.
