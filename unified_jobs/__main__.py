from unified_jobs.cli import main

main()
