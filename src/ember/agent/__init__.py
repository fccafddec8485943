"""`ember agent`: a GPU machine's side of Ember. It connects out to the control plane (so it works
behind NAT, and exposes no Docker socket or database port), reports its GPUs and the workers it runs,
and carries out the orders it is given (launch, stop, exec, logs) through its own backends."""
