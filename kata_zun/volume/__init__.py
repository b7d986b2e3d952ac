"""Volumes for sandbox VMs.

A volume is a typed device handed to the VM plus a guest mount spec:

* ``block``: a raw image file (or block device) given to QEMU as a
  virtio-blk disk, opened by the privileged side and passed as a file
  descriptor (read-only when the mount is). The host never mounts it: a
  guest-written file system is never parsed by the host kernel. The agent
  mounts it at the target, making an ext4 on a blank one.
* ``volume``: a named volume of :mod:`kata_zun.volume.store`: a sparse
  raw image under ``<state_path>/volumes/NAME/``, handed over as a block
  volume.
* ``bind``: a host directory shared through virtio-fs by a virtiofsd
  confined to it (:mod:`.virtiofs`), or one host file, exported alone
  (never its directory) and bind-mounted at the target by the agent.

:mod:`.spec` parses and validates what a user asks for,
:mod:`.devices` turns a container record into VM disks, shared
directories and agent specs, :mod:`.store` keeps named volumes,
:mod:`.cli` is the ``volume`` sub-command.
"""
