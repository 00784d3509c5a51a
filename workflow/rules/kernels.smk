# Kernels (seeds 001, 002): empirical vs infinite-width NTK, kernel regression vs the
# trained network, linearized vs real GD.
#   kn_dataset (ds) -> kn_accuracy (ds, n, seed); kn_dataset (digits) -> kn_convergence (h), kn_linearized (h)
#   -> kn_summary (CSV) -> kn_figure (name)
# Steps, their files and params are declared in memgen.families.kernels.
family_rules("kernels")
