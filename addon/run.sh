#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# Add-on start: turn /data/options.json and the Supervisor's MQTT service into /data/config.yaml
# (wa_mqtt.addon_options), then run the bridge with its sessions and state under /data.
set -euo pipefail

bashio::log.info "Writing the bridge configuration from the add-on options..."
python -m wa_mqtt.addon_options \
    --options /data/options.json \
    --extra /config/config.yaml \
    --output /data/config.yaml

bashio::log.info "Starting the WhatsApp MQTT bridge..."
exec python -m wa_mqtt --config /data/config.yaml
