"""Pure mathematics on tensors and arrays: no files, no model loading, no command-line concerns.

Closed-form curvature of the head (:mod:`.curvature`), Hutchinson traces (:mod:`.hutchinson`), the
attacks behind one interface with their registry (:mod:`.attacks`) and the losses they ascend
(:mod:`.attack_losses`), trajectory statistics (:mod:`.trajectories`), head scaling (:mod:`.head_scaling`),
the radius of Prop. 8/9 (:mod:`.radius`), detector estimators (:mod:`.detectors`), summary statistics
(:mod:`.statistics`), the Lipschitz constant of the feature map (:mod:`.lipschitz`) and the normalising
classifier wrapper every model runs in (:mod:`.classifier`).
"""
