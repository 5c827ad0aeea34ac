from cli import main

if __name__ == "__main__":  # a spawned process (vLLM's engine) may import the main module: nothing runs then
    main()
