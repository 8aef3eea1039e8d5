#compdef flatrob

_flatrob_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _FLATROB_COMPLETE=complete_zsh flatrob)
}

compdef _flatrob_completion flatrob
