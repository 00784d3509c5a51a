# Inverse Hessian-vector products and influence functions (Koh & Liang 2017; seed 003).
#   cv_toy (exact / CG / LiSSA, LiSSA paths);
#   cv_digits -> cv_train (model) -> cv_influence -> cv_loo, cv_solvers  -> cv_summary (CSV) -> cv_figure (name)
# Steps, their files and params are declared in memgen.families.curvature.
family_rules("curvature")
