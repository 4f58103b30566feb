"""Built-in message templates: <locale>/<template>.<channel>.<part>.j2 (see dunning.rendering)."""
