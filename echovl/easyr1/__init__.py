"""EchoRL on EasyR1: the only part of echovl that imports EasyR1 (package ``verl``) and Ray.

- :mod:`.actor`: ``EchoActor(DataParallelPPOActor)``: token entropy in the old-log-prob pass, echo term in the update.
- :mod:`.worker`: ``EchoWorker(FSDPWorker)``: uses ``EchoActor``, returns ``old_entropy`` beside ``old_log_probs``.
- :mod:`.mining`: driver-side EchoClip mining on a rollout batch (whole groups by ``uid``).
- :mod:`.filtering`: what EchoRL keeps of the groups DAPO's online filter drops.
- :mod:`.trainer`: ``EchoTrainer(RayPPOTrainer)``: verified flags, mining, metrics, traces.
- :mod:`.config` and :mod:`.main`: the ``echo:`` config section and ``python -m echovl.train``.
- :mod:`.cluster`: several nodes: echovl shipped to every node by Ray, a start-up check of every node.

Install with ``pip install -e '.[easyr1]'``. Nothing here is imported by ``import echovl``.
"""
