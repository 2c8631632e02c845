"""Witnessed checkpoints: each new checkpoint goes to C2SP tlog-witnesses with a consistency
proof; their cosignatures are stored, and only a checkpoint a quorum cosigned is published."""
