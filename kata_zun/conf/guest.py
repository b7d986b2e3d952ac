from oslo_config import cfg

GROUP = cfg.OptGroup('kata_guest', title='Guest asset options')

OPTS = [
    cfg.StrOpt('kernel_version', default='',
               help='Installed kernel release to boot in guests (the '
                    'linux-image-cloud-amd64 one when empty).'),
    cfg.StrOpt('kernel', default='',
               help='Explicit guest kernel (vmlinux or bzImage). Empty: '
                    'extract vmlinux from the installed cloud kernel.'),
    cfg.StrOpt('initrd', default='',
               help='Explicit guest initrd. Empty: the one built by '
                    '"kata-zun guest build".'),
    cfg.StrOpt('python_version', default='3.11',
               help='Debian python3.X-minimal used inside the guest.'),
    cfg.ListOpt('extra_modules', default=[],
                help='More kernel modules to load in the guest.'),
    cfg.StrOpt('kernel_params', default='',
               help='Extra guest kernel parameters (operator only).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
