#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static void *run(void *a) { return a; }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000;
    pthread_t *t = calloc(n, sizeof *t);
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, run, NULL)) { perror("pthread_create"); return 1; }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    printf("%d threads created and joined\n", n);
    return 0;
}
