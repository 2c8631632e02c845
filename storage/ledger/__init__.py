"""The verifiable ledger: RFC 6962 Merkle math, leaves, signed notes, checkpoints and proofs."""
