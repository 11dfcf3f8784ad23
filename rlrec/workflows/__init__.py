"""End-to-end pipelines above the agents and the evaluation: the main job and checks of a run.

* :mod:`rlrec.workflows.quickstart`: every stage of the main job on the embedded default;
* :mod:`rlrec.workflows.evaluate`: a run's policy against every baseline, in the fitted
  simulator or the truth world.

Workflows may import every layer below them (data, models, envs, evaluation, agents); only the
CLI imports workflows.
"""
