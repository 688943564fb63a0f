//! Round trips of SAN-like images (tools' generator): day 0, then day 1
//! stores only a small fraction of its size, both read back bit-exactly.
