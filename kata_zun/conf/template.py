"""VM templating options (``[kata]`` group; see
:mod:`kata_zun.hypervisor.template`)."""

from oslo_config import cfg

from kata_zun.conf import runtime

GROUP = runtime.GROUP

OPTS = [
    cfg.BoolOpt('vm_templating', default=True,
                help='Start sandboxes by restoring a VM template (a VM '
                     'booted once per guest assets, memory size, vCPUs '
                     'and device shape, paused with its agent ready) '
                     'instead of booting each one: tens of milliseconds '
                     'instead of seconds under TCG. Every clone gets a '
                     'fresh identity before any container code runs: '
                     'its kernel RNG reseeded from host entropy, its '
                     'clock set, its own hostname, boot id, machine-id, '
                     'NICs (hotplugged with their own MAC) and disks. '
                     'Residual risk, as with KSM: clones share the '
                     'template\'s memory pages until they write them '
                     '(timing side channels between sandboxes on what '
                     'is still shared; share_template_ram in '
                     '[kata_jail] turns sharing off), and every clone '
                     'of one template has the same kernel address '
                     'layout (KASLR offsets are chosen once, at the '
                     'template\'s boot). A clone keeps the pages its '
                     'guest once wrote: free page reporting gives back '
                     'memory of cold VMs only (see [kata_hypervisor] '
                     'free_page_reporting). Set to false to boot every '
                     'sandbox cold. A template that is missing, corrupt '
                     'or does not match falls back to a cold boot with '
                     'a warning.'),
    cfg.StrOpt('template_dir', default='/dev/shm/kata-zun-templates',
               help='Where VM templates (guest RAM, device state, index) '
                    'are kept. A memory file system (tmpfs) makes '
                    'restores fastest; after a reboot its templates are '
                    'gone and are rebuilt on first use. Root only '
                    '(0700); the socket paths of a template build live '
                    'here too, so keep it short.'),
    cfg.IntOpt('template_max_count', default=4, min=1, max=64,
               help='At most this many VM templates are kept; the least '
                    'recently used go first. Each holds about the guest '
                    'RAM size (twice that with the jail on).'),
    cfg.IntOpt('template_max_age', default=7 * 24 * 3600, min=60,
               help='Seconds after its last use a VM template is removed '
                    '(templates of replaced guest assets stop being used '
                    'and so age out).'),
]


def register_opts(conf):
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
