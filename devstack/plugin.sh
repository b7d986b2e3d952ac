#!/bin/bash
# DevStack plugin for kata-zun: enable it after zun in local.conf.
# DevStack sources this file with the mode and phase as arguments:
# "stack install|post-config|extra", "unstack", "clean".

# shellcheck source=/dev/null
source "${KATA_ZUN_DIR:-$DEST/kata-zun}/devstack/lib/kata_zun"

if is_service_enabled zun-compute; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing kata-zun"
        install_kata_zun
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring kata-zun"
        configure_kata_zun
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Checking this host for kata-zun"
        check_kata_zun
    fi
    if [[ "$1" == "unstack" ]]; then
        cleanup_kata_zun
    fi
    if [[ "$1" == "clean" ]]; then
        cleanup_kata_zun
        clean_kata_zun
    fi
fi
