"""Data statistics: `covariance` (mean, covariance and its eigendecomposition, streamed in float64, cached on disk
and in memory) and `spectrum` (power-law fit of the eigenvalues, variance shares, correlation maps)."""
