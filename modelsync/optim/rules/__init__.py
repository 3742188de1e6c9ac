"""The rules' maths, one file per family, every form of it side by side: ``scalars(step)``
(the per-step numbers, computed once on the host), ``update_xp`` (array API: the reference,
and what the simulated device runs), ``update_host`` (NumPy in place, no allocation per
step), ``loop`` (a plain loop that `modelsync.kernels` compiles with numba) and
``update_cuda`` (one fused CuPy kernel). The engine (`modelsync.optim.optimizer`,
`modelsync.optim.transform`) knows no rule by name: adding a rule is one file here."""
