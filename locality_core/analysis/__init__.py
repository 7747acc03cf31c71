"""What the dashboard computes from denoisers: `fields` (sensitivity fields and their locality), `basis` (Jacobian
eigenbases, tr J), `sampling` (DDIM and the cached trajectories), `metrics` (agreement, nearest training image),
`calibration` (patch sizes fitted to a network), `transforms` (the data changes of "Locality follows the data"),
`generalisation` (memorisation to generalisation), `linear_fit` (gradient descent to the Wiener filter),
`claims` (findings computed from the numbers shown)."""
